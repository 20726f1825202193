"""QSGD baseline: unbiasedness, hand values, variance bound, payload checks."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.codecs import CodecContext, PayloadError, TensorInfo, payload_nbytes, validate_payload
from fedsim.codecs.qsgd import Qsgd, qsgd_dequantize, qsgd_quantize
from fedsim.registry import CODECS


def test_hand_computed_levels() -> None:
    v = np.array([3.0, -4.0, 0.0, 0.0], dtype=np.float32)  # ||v|| = 5; s = 5: levels 3, 4
    sym, norm = qsgd_quantize(v, 5, 4, np.full(4, 0.5, dtype=np.float32))
    np.testing.assert_array_equal(sym, [8, 1, 5, 5])  # sign*l + s
    np.testing.assert_allclose(qsgd_dequantize(sym, norm, 5, 4), v, rtol=1e-6)
    # |v|/||v|| * s = 0.5 * 2 = 1.0 ... and 0.6*2 = 1.2: r < 0.8 rounds down, r >= 0.8 up
    w = np.array([0.6, 0.8], dtype=np.float32)  # ||w|| = 1, s = 2: 1.2 and 1.6
    sym, _ = qsgd_quantize(w, 2, 2, np.array([0.79, 0.41], dtype=np.float32))
    np.testing.assert_array_equal(sym, [3, 4])  # floor(1.99) = 1, floor(2.01) = 2


@pytest.mark.parametrize("levels", [1, 3])
def test_unbiased_by_monte_carlo(levels: int) -> None:
    d, n_draws = 64, 4000
    v = np.random.default_rng(0).standard_normal(d).astype(np.float32)
    tiled = np.tile(v, n_draws)
    r = np.random.default_rng(1).random(tiled.size, dtype=np.float32)
    sym, norm = qsgd_quantize(tiled, levels, d, r)
    est = qsgd_dequantize(sym, norm, levels, d).reshape(n_draws, d)
    nv = np.linalg.norm(v)
    sd = nv / (2 * levels)  # a Bernoulli between adjacent levels: std <= step/2
    assert np.abs(est.mean(axis=0) - v).max() < 5 * sd / np.sqrt(n_draws)
    # Lemma 3.1: E||Q(v) - v||^2 <= min(d/s^2, sqrt(d)/s) ||v||^2
    mse = ((est - v) ** 2).sum(axis=1).mean()
    assert mse <= min(d / levels**2, np.sqrt(d) / levels) * nv**2


def test_codec_round_trip_bits_and_validation() -> None:
    codec = CODECS.build("qsgd", {"levels": 1, "bucket": 512})
    n = 5 * 512 * 4
    x = np.random.default_rng(3).standard_normal(n).astype(np.float32)
    info = TensorInfo("w", x.shape)
    ctx = CodecContext(1, 1, 1, 0)
    payload, _ = codec.encode(x, {}, ctx)
    validate_payload(codec, payload, info)
    assert 8 * payload_nbytes(payload) / n == pytest.approx(1.6 + 32 / 512) == codec.bits_per_coordinate(n)
    x_hat = codec.decode(payload, info, ctx)
    norms = np.linalg.norm(x.reshape(-1, 512), axis=1)
    assert np.all(np.isin(np.round(x_hat.reshape(-1, 512) / norms[:, None], 5), [-1.0, 0.0, 1.0]))
    with pytest.raises(PayloadError, match="not a valid packing"):
        validate_payload(codec, dict(payload, sym=np.full_like(payload["sym"], 243)), info)
    with pytest.raises(PayloadError, match="must lie in"):
        validate_payload(codec, dict(payload, norm=-payload["norm"]), info)
    with pytest.raises(PayloadError, match="shape"):
        validate_payload(codec, dict(payload, norm=payload["norm"][:2]), info)
    with pytest.raises(ValueError, match="levels"):
        Qsgd(levels=0)


def test_zero_vector() -> None:
    sym, norm = qsgd_quantize(np.zeros(10, dtype=np.float32), 3, 5, np.zeros(10, dtype=np.float32))
    assert np.all(qsgd_dequantize(sym, norm, 3, 5) == 0)
