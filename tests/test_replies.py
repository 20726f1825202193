"""The reply checks shared by the wrapper and a stand-alone payload strategy (:mod:`fedsim.engine.replies`)."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.codecs.base import PayloadError, TensorInfo
from fedsim.engine.replies import MetricsCheck, check_update, reply_cap, squared_norm


def test_reply_cap_is_the_ratio_times_the_dense_update_plus_headers():
    infos = [TensorInfo("w", (10, 10)), TensorInfo("b", (10,))]
    assert reply_cap(infos, 2.0) == 2 * 110 * 4 + 64 * 1024 + 2 * 256
    assert reply_cap([], 2.0) == 64 * 1024


def test_check_update_names_the_tensor_and_bounds_the_norm():
    infos = [TensorInfo("w", (2,)), TensorInfo("b", (1,))]
    check_update([np.array([3.0, 0.0], np.float32), np.array([4.0], np.float32)], infos, max_norm=5.0)
    with pytest.raises(PayloadError, match="exceeds"):
        check_update([np.array([3.0, 0.0], np.float32), np.array([4.0], np.float32)], infos, max_norm=4.99)
    with pytest.raises(PayloadError, match="^b: the decoded update is not finite"):
        check_update([np.zeros(2, np.float32), np.array([np.inf], np.float32)], infos)
    with pytest.raises(PayloadError, match="^update: "):
        check_update([np.array([np.nan])], infos)  # one flat vector: no tensor name


def test_squared_norm_survives_float32_overflow():
    x = np.full(4, 3e19, np.float32)  # x.x = 3.6e39 > float32 max
    assert squared_norm(x) == pytest.approx(4 * 9e38)


def test_metrics_check_keeps_the_known_finite_metrics_and_trusts_discovery():
    check = MetricsCheck({"num-examples", "train-loss"}, {3: 100}, tolerance=0.0)
    assert check(3, {"num-examples": 100.4, "train-loss": 0.5, "other": 1.0}) == {"num-examples": 100.0,
                                                                               "train-loss": 0.5}
    assert check(3, {"num-examples": 100.0, "train-loss": float("nan")}) == {"num-examples": 100.0}
    with pytest.raises(PayloadError, match="has 100 examples"):
        check(3, {"num-examples": 101.0, "train-loss": 0.5})
    assert check.trusted_examples(9, 5000.0) == 100.0  # unknown size: the median known one, not the claim
