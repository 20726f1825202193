"""DQSG: the invariants of Abdi and Fekri 2019, Sec. 3 (Theorem 1) by seeded Monte Carlo, and the codec."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fedsim.codecs import CodecContext, PayloadError, TensorInfo, payload_nbytes, validate_payload
from fedsim.codecs.dither import uniform
from fedsim.codecs.dithered import Dqsg, dequantize, quantize
from fedsim.registry import CODECS

M = 3
D = 64  # one bucket = one copy of the test vector
N = 4000  # Monte Carlo draws


def _bucket() -> tuple[np.ndarray, float]:
    """A bucket with ||g||_inf = 0.75, so s = 0.25: grid points, midpoints and off-grid values."""
    rng = np.random.default_rng(0)
    g = rng.uniform(-0.75, 0.75, D).astype(np.float32)
    g[:8] = np.array([0.75, -0.75, 0.0, 0.25, -0.5, 0.125, -0.375, 0.625], dtype=np.float32)
    # g[:4], g[4] grid points (k*s), g[5:8] midpoints (k + 1/2)*s
    return g, 0.25


def _errors(u_server_seed: int | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """N dithered encodings of the same bucket: errors (N, D), the bucket, the step."""
    g, s = _bucket()
    tiled = np.tile(g, N)
    u = uniform((1, 0), 0, tiled.size)
    sym, scale = quantize(tiled, M, D, u)
    assert np.all(scale == np.float32(s))
    u_dec = u if u_server_seed is None else uniform((u_server_seed, 0), 0, tiled.size)
    g_hat = dequantize(sym, scale, M, D, u_dec)
    return (g_hat - tiled).reshape(N, D), g, s


def test_error_is_bounded_by_half_a_step() -> None:
    err, _, s = _errors()
    assert np.abs(err).max() <= s / 2 * (1 + 1e-6)


def test_error_is_uniform_zero_mean_variance_s2_over_12() -> None:
    err, _, s = _errors()
    e = err.ravel().astype(np.float64)
    n = e.size
    assert abs(e.mean()) < 4 * s / np.sqrt(12 * n)  # 4 sigma of the mean
    # Var(e^2) = s^4 (1/80 - 1/144): 4 sigma on the variance estimate
    assert abs(e.var() - s * s / 12) < 4 * s * s * np.sqrt(1 / 80 - 1 / 144) / np.sqrt(n)
    assert stats.kstest(e / s, stats.uniform(loc=-0.5, scale=1).cdf).pvalue > 1e-3


@pytest.mark.parametrize("j", [0, 2, 3, 4, 5, 6, 7, 20, 40])  # grid points, midpoints, off-grid
def test_error_is_independent_of_the_input(j: int) -> None:
    err, g, s = _errors()
    e = err[:, j].astype(np.float64)
    assert abs(e.mean()) < 4 * s / np.sqrt(12 * N), f"g={g[j]}"
    assert abs(e.var() - s * s / 12) < 4 * s * s * np.sqrt(1 / 80 - 1 / 144) / np.sqrt(N), f"g={g[j]}"
    assert stats.kstest(e / s, stats.uniform(loc=-0.5, scale=1).cdf).pvalue > 1e-3, f"g={g[j]}"


def test_error_is_uncorrelated_with_the_input() -> None:
    err, g, _ = _errors()
    per_coord_mean = err.mean(axis=0)
    assert abs(np.corrcoef(per_coord_mean, g)[0, 1]) < 0.4  # 64 points: |r| < 0.4 is ~3 sigma


def test_wrong_dither_is_biased() -> None:
    # the server decodes every draw with one wrong dither u': the error's mean is -s*u'
    g, s = _bucket()
    tiled = np.tile(g, N)
    u = uniform((1, 0), 0, tiled.size)
    sym, scale = quantize(tiled, M, D, u)
    u_wrong = np.tile(uniform((99, 0), 0, D), N)
    err = (dequantize(sym, scale, M, D, u_wrong) - tiled).reshape(N, D)
    bias = err.mean(axis=0)
    np.testing.assert_allclose(bias, -s * u_wrong[:D], atol=6 * s / np.sqrt(N))
    assert np.abs(bias).max() > 20 * s / np.sqrt(12 * N)  # far outside the right decoder's spread


def test_wrong_seed_error_depends_on_the_input() -> None:
    # a wrong seed (a fresh unrelated dither each draw): e/s = (q - g/s) - u' with
    # q - g/s in {-p, 1 - p}, p = frac(g/s): variance s^2 (1/12 + p(1 - p)), s^2/12 on
    # the grid but s^2/3 at midpoints, and |e| beyond s/2
    err, g, s = _errors(u_server_seed=7)
    var = err.var(axis=0)
    assert var[2] == pytest.approx(s * s / 12, rel=0.08)  # g = 0, on the grid
    assert var[5] == pytest.approx(s * s / 3, rel=0.08)  # g = 0.125, a midpoint
    assert np.abs(err).max() > s / 2


def test_hand_computed_values() -> None:
    g = np.array([0.3, -0.6, 0.0, 0.15], dtype=np.float32)  # ||g|| = 0.6, M = 3: s = 0.2
    u = np.array([0.1, 0.0, -0.4, 0.45], dtype=np.float32)
    sym, scale = quantize(g, 3, 4, u)
    # g/s + u = [1.6, -3.0, -0.4, 1.2] -> q = [2, -3, 0, 1] -> sym = q + 3
    np.testing.assert_array_equal(sym, [5, 0, 3, 4])
    np.testing.assert_allclose(scale, [0.2], rtol=1e-6)
    np.testing.assert_allclose(dequantize(sym, scale, 3, 4, u), 0.2 * np.array([1.9, -3.0, 0.4, 0.55]), rtol=1e-6)


def test_zero_bucket_decodes_to_zero_error_bound() -> None:
    g = np.zeros(10, dtype=np.float32)
    u = uniform((3, 0), 0, 10)
    sym, scale = quantize(g, 3, 4, u)
    assert np.isfinite(scale).all() and (scale > 0).all()
    assert np.abs(dequantize(sym, scale, 3, 4, u)).max() < 1e-30


# ---------------------------------------------------------------------------- codec


def _ctx(round_: int = 0) -> CodecContext:
    return CodecContext(seed=11, round=round_, client=3, tensor=0)


def test_codec_round_trip_and_registry() -> None:
    codec = CODECS.build("dqsg", {"levels": 3, "bucket": 100})
    x = np.random.default_rng(5).standard_normal((30, 17)).astype(np.float32)
    info = TensorInfo("w", x.shape)
    payload, _ = codec.encode(x, {}, _ctx())
    validate_payload(codec, payload, info)
    x_hat = codec.decode(payload, info, _ctx())
    assert x_hat.shape == x.shape and x_hat.dtype == np.float32
    s = np.abs(x).reshape(-1)[:100].max() / 3
    assert np.abs(x_hat - x).reshape(-1)[:100].max() <= s / 2 * (1 + 1e-5)
    # a different round is a different dither: decoding with it is wrong
    assert np.abs(codec.decode(payload, info, _ctx(1)) - x).max() > s / 2


@pytest.mark.parametrize("scale_dtype, scale_bytes", [("float32", 4), ("float16", 2)])
def test_bits_per_coordinate_match_the_formula(scale_dtype: str, scale_bytes: int) -> None:
    codec = Dqsg(levels=3, bucket=512, scale_dtype=scale_dtype)
    n = 17 * 512 * 2  # whole blocks and whole buckets
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    payload, _ = codec.encode(x, {}, _ctx())
    bits = 8 * payload_nbytes(payload) / n
    assert bits == pytest.approx(48 / 17 + 8 * scale_bytes / 512)  # 2.824 + scales
    assert bits == pytest.approx(codec.bits_per_coordinate(n))


def test_fp16_scales_round_trip() -> None:
    codec = Dqsg(levels=3, bucket=64, scale_dtype="float16")
    x = np.random.default_rng(2).standard_normal(1000).astype(np.float32)
    info = TensorInfo("w", x.shape)
    payload, _ = codec.encode(x, {}, _ctx())
    validate_payload(codec, payload, info)
    s = payload["scale"].astype(np.float32)
    err = codec.decode(payload, info, _ctx()) - x
    assert np.all(np.abs(err) <= np.repeat(s, 64)[:1000] / 2 * (1 + 1e-5))


def test_payload_validation_rejects() -> None:
    codec = Dqsg(levels=3, bucket=100)
    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    info = TensorInfo("w", x.shape)
    good, _ = codec.encode(x, {}, _ctx())
    bad_sym = dict(good, sym=np.full_like(good["sym"], 255))  # blocks >= 7**17
    with pytest.raises(PayloadError, match="not a valid packing"):
        validate_payload(codec, bad_sym, info)
    with pytest.raises(PayloadError, match="shape"):
        validate_payload(codec, dict(good, scale=good["scale"][:-1]), info)
    with pytest.raises(PayloadError, match="non-finite"):
        bad_scale = np.where(np.arange(10) == 3, np.inf, good["scale"]).astype(np.float32)
        validate_payload(codec, dict(good, scale=bad_scale), info)
    with pytest.raises(PayloadError, match="must lie in"):
        validate_payload(codec, dict(good, scale=-good["scale"]), info)
    with pytest.raises(PayloadError, match="dtype"):
        validate_payload(codec, dict(good, scale=good["scale"].astype(np.float64)), info)


def test_nan_update_gives_a_payload_the_server_rejects() -> None:
    codec = Dqsg()
    x = np.full(600, np.nan, dtype=np.float32)
    payload, _ = codec.encode(x, {}, _ctx())
    with pytest.raises(PayloadError, match="non-finite"):
        validate_payload(codec, payload, TensorInfo("w", x.shape))


@pytest.mark.parametrize("kwargs, msg", [({"levels": 0}, "levels"), ({"bucket": 0}, "bucket"),
                                         ({"scale_dtype": "int8"}, "scale_dtype")])
def test_constructor_validates(kwargs: dict[str, object], msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        Dqsg(**kwargs)  # type: ignore[arg-type]
