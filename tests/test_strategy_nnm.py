"""NNM in front of Flower's aggregators, and the trimmed-mean strategy, on hand values."""

import numpy as np
import pytest
from conftest import run_inprocess, small_config
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedMedian, FedTrimmedAvg, Krum

from fedsim.clients.app import app
from fedsim.engine.inprocess import InProcessGrid
from fedsim.metrics import read_rows
from fedsim.registry import STRATEGIES, PluginError
from fedsim.strategies.monna import MoNNA
from fedsim.strategies.nnm import NNM, mix_replies
from fedsim.strategies.trimmed_mean import TrimmedMean
from fedsim.wire import to_record


def replies(models):
    """Reply messages carrying ``{"a": (2,), "b": (1,)}`` models, as the wrapper forwards them."""
    InProcessGrid(app, 1)  # sets what Message() needs outside a ServerApp
    out = []
    for k, m in enumerate(models):
        m = np.asarray(m, np.float32)
        req = Message(RecordDict(), dst_node_id=100 + k, message_type=MessageType.TRAIN)
        content = RecordDict({"arrays": to_record({"a": m[:2], "b": m[2:]}),
                              "metrics": MetricRecord({"num-examples": 1.0, "train-loss": 1.0})})
        out.append(Message(content, reply_to=req))
    return out


def result(arrays: ArrayRecord) -> np.ndarray:
    return np.concatenate([np.asarray(a).ravel() for a in arrays.to_numpy_ndarrays()])


# Five models; the last is an outlier. n = 5, f = 1: each model becomes the mean of its 4
# nearest (itself included): rows 0..3 -> mean(rows 0..3) = (1.5, 1, 0.5);
# row 4 -> mean(rows 1..4) = ((1+2+3+100)/4, (0+4+0+40)/4, (0+0+2+8)/4) = (26.5, 11, 2.5).
MODELS = [[0, 0, 0], [1, 0, 0], [2, 4, 0], [3, 0, 2], [100, 40, 8]]


def test_nnm_mix_hand_values():
    got = [result(m.content["arrays"]) for m in mix_replies(replies(MODELS), 1)]
    np.testing.assert_allclose(got[:4], [[1.5, 1, 0.5]] * 4)
    np.testing.assert_allclose(got[4], [26.5, 11, 2.5])


def test_nnm_in_front_of_fedmedian_on_hand_values():
    # median over {1.5 x4, 26.5} etc. = (1.5, 1, 0.5); plain FedMedian gives (2, 0, 0).
    arrays, metrics = NNM(FedMedian(), f=1).aggregate_train(1, replies(MODELS))
    np.testing.assert_allclose(result(arrays), [1.5, 1, 0.5])
    assert metrics["train-loss"] == 1.0  # the metrics pass through to the inner strategy
    np.testing.assert_allclose(result(FedMedian().aggregate_train(1, replies(MODELS))[0]), [2, 0, 0])


def test_nnm_in_front_of_krum_and_fedtrimmedavg():
    arrays, _ = NNM(Krum(num_malicious_nodes=1), f=1).aggregate_train(1, replies(MODELS))
    np.testing.assert_allclose(result(arrays), [1.5, 1, 0.5])  # Krum picks a mixed honest row
    arrays, _ = NNM(FedTrimmedAvg(beta=0.2), f=1).aggregate_train(1, replies(MODELS))
    np.testing.assert_allclose(result(arrays), [1.5, 1, 0.5])


def test_trimmed_mean_hand_values_and_flower_agreement():
    # per coordinate drop 1 min and 1 max of 5: (1+2+3)/3, (0+0+4)/3, (0+0+2)/3
    arrays, _ = TrimmedMean(f=1).aggregate_train(1, replies(MODELS))
    np.testing.assert_allclose(result(arrays), [2, 4 / 3, 2 / 3], rtol=1e-6)
    rng = np.random.default_rng(0)
    for n, f in [(5, 1), (26, 5), (47, 3)]:
        models = rng.normal(size=(n, 3))
        ours = result(TrimmedMean(f=f).aggregate_train(1, replies(models))[0])
        flower = result(FedTrimmedAvg(beta=(f + 0.5) / n).aggregate_train(1, replies(models))[0])
        np.testing.assert_allclose(ours, flower, rtol=1e-5, atol=1e-7)
    # beta = f / n cuts f - 1 when f / n * n rounds down: 3/47*47 = 2.99..
    naive = result(FedTrimmedAvg(beta=3 / 47).aggregate_train(1, replies(models))[0])
    assert not np.allclose(naive, ours)


def test_registry_and_constructor_errors():
    s = STRATEGIES.build("nnm", {"inner": "fedmedian", "f": 2})
    assert isinstance(s, NNM) and isinstance(s.inner, FedMedian) and s.f == 2
    assert STRATEGIES.build("nnm", {"inner": "trimmed_mean", "inner_params": {"f": 3}, "f": 3}).inner.f == 3
    with pytest.raises(ValueError, match="f >= 0"):
        NNM(FedMedian(), f=-1)
    with pytest.raises(ValueError, match="consumes raw codec payloads"):
        NNM(MoNNA(1, 0.1), f=1)
    with pytest.raises(PluginError, match="known: .*fedmedian"):
        STRATEGIES.build("nnm", {"inner": "fedmedain", "f": 1})
    with pytest.raises(PluginError, match="unknown parameter 'gamma'"):
        STRATEGIES.build("nnm", {"inner": "fedmedian", "inner_params": {"gamma": 1}, "f": 1})
    with pytest.raises(ValueError, match="f >= 0"):
        TrimmedMean(f=-2)


def test_too_few_replies_keep_the_model():
    assert NNM(FedMedian(), f=2).aggregate_train(1, replies(MODELS[:4])) == (None, None)
    assert TrimmedMean(f=2).aggregate_train(1, replies(MODELS[:4])) == (None, None)


def test_nnm_trimmed_mean_runs_through_the_wrapper_under_attack(tmp_path):
    cfg = small_config("clients_per_round=10", "rounds=3", "attack={name: sign_flip, count: 2}",
                       "strategy={name: nnm, params: {inner: trimmed_mean, inner_params: {f: 2}, f: 2}}")
    run_inprocess(cfg, tmp_path)
    rows = read_rows(tmp_path)
    assert [r["replied"] for r in rows[1:]] == [10, 10, 10]
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"] + 0.2
