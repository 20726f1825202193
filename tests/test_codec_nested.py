"""NDQSG: exact nested decoding with close side information, failures, the codec."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.codecs import CodecContext, PayloadError, TensorInfo, payload_nbytes, validate_payload
from fedsim.codecs.dither import uniform
from fedsim.codecs.dithered import Dqsg, dequantize, quantize
from fedsim.codecs.nested import (
    Ndqsg,
    SideInformationRequired,
    decoding_failures,
    detectable_failures,
    estimate_failures_loo,
    expected_failure_fraction,
    fine_index,
    nested_dequantize,
    nested_fine_index,
    nested_quantize,
)
from fedsim.registry import CODECS

B = 256


def _case(n: int = 20 * B, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(n).astype(np.float32)
    return g, uniform((seed + 1, 0), 0, n)


def _steps(g: np.ndarray, m1: int) -> np.ndarray:
    return np.repeat(np.abs(g).reshape(-1, B).max(axis=1) / m1, B)


@pytest.mark.parametrize("m1, rho", [(3, 3), (8, 4), (6, 2), (10, 5)])
def test_close_side_information_decodes_exactly_to_dqsg(m1: int, rho: int) -> None:
    g, u = _case()
    s = _steps(g, m1)
    y = (g + 0.999 * s * (rho - 1) / 2 * np.random.default_rng(7).uniform(-1, 1, g.size)).astype(np.float32)
    sym, scale = nested_quantize(g, m1, rho, 1.0, B, u)
    assert sym.max() < rho  # exactly rho symbols, even rho included
    g_hat = nested_dequantize(sym, scale, u, y, rho, 1.0, B)
    dsym, dscale = quantize(g, m1, B, u)
    np.testing.assert_array_equal(scale, dscale)
    np.testing.assert_array_equal(g_hat, dequantize(dsym, dscale, m1, B, u))  # bit-identical
    assert decoding_failures(g, y, scale, u, rho, 1.0, B) == 0


def test_large_rho_equals_dqsg_for_any_bounded_side_information() -> None:
    g, u = _case()
    rho = 255  # |g - y| < s*(rho - 1)/2 = 127 s = 42.3 ||g||_inf (bucket) holds for |y| <= 40 ||g||_inf (tensor)
    s_min = np.abs(g).reshape(-1, B).max(axis=1).min() / 3
    for seed in range(3):
        y = (np.random.default_rng(seed).uniform(-1, 1, g.size) * (126 * s_min - np.abs(g).max())).astype(np.float32)
        sym, scale = nested_quantize(g, 3, rho, 1.0, B, u)
        dsym, dscale = quantize(g, 3, B, u)
        np.testing.assert_array_equal(nested_dequantize(sym, scale, u, y, rho, 1.0, B),
                                      dequantize(dsym, dscale, 3, B, u))


def test_far_side_information_fails_by_multiples_of_the_coarse_step() -> None:
    g, u = _case()
    m1, rho = 3, 3
    s = _steps(g, m1)
    y = (g + (rho + 1) / 2 * s * 1.01).astype(np.float32)  # |delta| > (rho + 1)/2: always wrong
    sym, scale = nested_quantize(g, m1, rho, 1.0, B, u)
    off = (nested_dequantize(sym, scale, u, y, rho, 1.0, B) - dequantize(*quantize(g, m1, B, u), m1, B, u)) / (s * rho)
    np.testing.assert_allclose(off, np.round(off), atol=1e-3)
    assert np.all(np.round(off) != 0)
    assert decoding_failures(g, y, scale, u, rho, 1.0, B) == g.size


@pytest.mark.parametrize("excess", [0.1, 0.3, 0.7])
def test_failure_rate_matches_the_expected_fraction(excess: float) -> None:
    g, u = _case(n=200 * B)
    m1, rho = 3, 3
    s = _steps(g, m1)
    sign = np.where(np.random.default_rng(3).random(g.size) < 0.5, -1.0, 1.0)
    delta = sign * ((rho - 1) / 2 + excess)  # failure probability = excess
    y = (g - delta * s).astype(np.float32)
    _, scale = nested_quantize(g, m1, rho, 1.0, B, u)
    rate = decoding_failures(g, y, scale, u, rho, 1.0, B) / g.size
    assert expected_failure_fraction(delta, rho) == pytest.approx(excess)
    assert rate == pytest.approx(excess, abs=4 * np.sqrt(excess * (1 - excess) / g.size) + 1e-3)


@pytest.mark.parametrize("alpha", [0.6, 0.9])
def test_alpha_decoder_equals_the_algorithms_md_form_and_zse_estimate(alpha: float) -> None:
    g, u = _case()
    m1, rho = 3, 3
    s = _steps(g, m1)
    y = (g + 0.9 * s * (rho - 1) / (2 * alpha) * np.random.default_rng(2).uniform(-1, 1, g.size)).astype(np.float32)
    sym, scale = nested_quantize(g, m1, rho, alpha, B, u)
    g_hat = nested_dequantize(sym, scale, u, y, rho, alpha, B)
    # the paper's form (Sec. 4): r = s(q - u) - alpha y; g_hat = y + alpha (r - s rho round(r/(s rho)))
    r = s * (sym - u.astype(np.float64)) - alpha * y
    page = y + alpha * (r - s * rho * np.round(r / (s * rho)))
    np.testing.assert_allclose(g_hat, page, atol=1e-5)
    # with the fine index recovered: (1 - alpha^2) y + alpha s (q1 - u)
    assert decoding_failures(g, y, scale, u, rho, alpha, B) == 0
    q1 = fine_index(g, scale, alpha, B, u)
    np.testing.assert_allclose(g_hat, (1 - alpha**2) * y + alpha * s * (q1 - u), atol=1e-5)


def test_unbiased_estimator_is_unbiased() -> None:
    alpha, m1, rho, n_draws = 0.7, 3, 3, 2000
    g = np.linspace(-1, 1, B).astype(np.float32)
    tiled = np.tile(g, n_draws)
    u = uniform((0, 0), 0, tiled.size)
    y = (tiled + 0.05).astype(np.float32)
    sym, scale = nested_quantize(tiled, m1, rho, alpha, B, u)
    err = (nested_dequantize(sym, scale, u, y, rho, alpha, B, estimator="unbiased") - tiled).reshape(n_draws, B)
    s = 1 / 3
    sd = s / alpha / np.sqrt(12)
    assert np.abs(err.mean(axis=0)).max() < 5 * sd / np.sqrt(n_draws)
    assert err.var() == pytest.approx(sd**2, rel=0.03)
    # the mmse estimator is biased towards y by (1 - alpha^2)(y - g)
    mm = (nested_dequantize(sym, scale, u, y, rho, alpha, B) - tiled).mean()
    assert mm == pytest.approx((1 - alpha**2) * 0.05, abs=1e-3)


def test_hand_computed_nested_values() -> None:
    # M1 = 3, rho = 3, ||g|| = 0.6: s = 0.2; t = g/s + u
    g = np.array([0.6, -0.5, 0.1, 0.0], dtype=np.float32)
    u = np.array([0.2, 0.1, -0.3, 0.0], dtype=np.float32)
    sym, scale = nested_quantize(g, 3, 3, 1.0, 4, u)
    # t = [3.2, -2.4, 0.2, 0.0] -> q1 = [3, -2, 0, 0] -> q1 mod 3 = [0, 1, 0, 0]
    np.testing.assert_array_equal(sym, [0, 1, 0, 0])
    y = np.array([0.5, -0.3, 0.2, -0.2], dtype=np.float32)  # within s(rho-1)/2 = 0.2
    np.testing.assert_array_equal(nested_fine_index(sym, scale, u, y, 3, 1.0, 4), [3, -2, 0, 0])
    np.testing.assert_allclose(nested_dequantize(sym, scale, u, y, 3, 1.0, 4), 0.2 * np.array([2.8, -2.1, 0.3, 0.0]),
                               rtol=1e-6)
    assert detectable_failures(np.array([3.0, -3.0, 4.0, -6.0]), 3, 1.0) == 2


def test_leave_one_out_estimate() -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal(4 * B).astype(np.float32)
    close = [base + 0.01 * rng.standard_normal(base.size).astype(np.float32) for _ in range(4)]
    far = [rng.standard_normal(base.size).astype(np.float32) for _ in range(4)]
    assert estimate_failures_loo(close, 3, 3, 1.0, B) == 0.0
    # independent N(0, 1) references: s ~ 1 (max of 256 normals / 3), g - y ~ N(0, 4/3):
    # E clip(|delta| - 1, 0, 1) is about 0.2
    assert 0.1 < estimate_failures_loo(far, 3, 3, 1.0, B) < 0.35
    assert np.isnan(estimate_failures_loo(close[:1], 3, 3, 1.0, B))


# ---------------------------------------------------------------------------- codec


def _ctx() -> CodecContext:
    return CodecContext(seed=5, round=2, client=9, tensor=1)


def test_codec_decodes_with_side_info_like_dqsg_and_refuses_without() -> None:
    codec = CODECS.build("ndqsg", {"m1": 3, "m2": 1, "bucket": 128})
    x = np.random.default_rng(1).standard_normal((40, 32)).astype(np.float32)
    info = TensorInfo("w", x.shape)
    payload, _ = codec.encode(x, {}, _ctx())
    validate_payload(codec, payload, info)
    with pytest.raises(SideInformationRequired, match="decode_with_side_info"):
        codec.decode(payload, info, _ctx())
    assert not isinstance(SideInformationRequired("x"), PayloadError)
    y = x + np.float32(0.01)
    dq = Dqsg(levels=3, bucket=128)
    ref = dq.decode(dq.encode(x, {}, _ctx())[0], info, _ctx())
    np.testing.assert_array_equal(codec.decode_with_side_info(payload, info, _ctx(), y), ref)
    with pytest.raises(ValueError, match="entries"):
        codec.decode_with_side_info(payload, info, _ctx(), y[:3])
    stats: dict[str, int] = {}
    codec.decode_with_side_info(payload, info, _ctx(), y, stats)
    assert stats == {"detectable_failures": 0, "coordinates": x.size}
    codec.decode_with_side_info(payload, info, _ctx(), y + 10 * np.abs(x).max(), stats)  # far: most fail visibly
    assert stats["coordinates"] == 2 * x.size and stats["detectable_failures"] > x.size // 2


def test_bits_per_coordinate_match_the_formula_and_the_paper_ratio() -> None:
    n = 5 * 17 * 512
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    nd, dq = Ndqsg(m1=3, m2=1, bucket=512), Dqsg(levels=3, bucket=512)
    b_nd = 8 * payload_nbytes(nd.encode(x, {}, _ctx())[0]) / n
    b_dq = 8 * payload_nbytes(dq.encode(x, {}, _ctx())[0]) / n
    assert b_nd == pytest.approx(1.6 + 32 / 512) == nd.bits_per_coordinate(n)
    assert b_nd / b_dq <= 0.6  # the goal: NDQSG <= 0.6x DQSG's bits


def test_payload_validation_rejects() -> None:
    codec = Ndqsg(m1=3, m2=1, bucket=100)
    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    info = TensorInfo("w", x.shape)
    good, _ = codec.encode(x, {}, _ctx())
    with pytest.raises(PayloadError, match="not a valid packing"):
        validate_payload(codec, dict(good, sym=np.full_like(good["sym"], 250)), info)
    with pytest.raises(PayloadError, match="shape"):
        validate_payload(codec, dict(good, scale=np.ones(11, dtype=np.float32)), info)
    with pytest.raises(PayloadError, match="non-finite"):
        validate_payload(codec, dict(good, scale=np.full(10, np.nan, dtype=np.float32)), info)
    with pytest.raises(PayloadError, match="must lie in"):
        validate_payload(codec, dict(good, scale=np.zeros(10, dtype=np.float32)), info)


@pytest.mark.parametrize(
    "kwargs, msg",
    [({"m1": 3, "m2": 2}, "rho"), ({"m1": 0}, "m1"), ({"alpha": 1.5}, "alpha"), ({"estimator": "x"}, "estimator")],
)
def test_constructor_validates(kwargs: dict[str, object], msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        Ndqsg(**kwargs)  # type: ignore[arg-type]


def test_constrain_fine_index_hand_values() -> None:
    from fedsim.codecs.nested import constrain_fine_index

    # rho = 3, bound 3: 4 -> 1, 5 -> 2, 7 -> 1, -4 -> -1, -6 -> -3; in range: unchanged
    q = np.array([4, 5, 7, -4, -6, 3, -3, 0, 2], dtype=np.float32)
    assert constrain_fine_index(q, 3, 3).tolist() == [1, 2, 1, -1, -3, 3, -3, 0, 2]
    # rho = 2, bound 1: 2 -> 0, 3 -> 1, -2 -> 0
    assert constrain_fine_index(np.array([2, 3, -2], np.float32), 2, 1).tolist() == [0, 1, 0]


def test_constrained_decode_keeps_correct_decodes_and_repairs_some_failures() -> None:
    codec = Ndqsg(m1=3, m2=1, bucket=B)
    n = 20 * B
    info = TensorInfo("t", (n,))
    rng = np.random.default_rng(5)
    g = rng.standard_normal(n).astype(np.float32)
    y = g + 1.0 * rng.standard_normal(n).astype(np.float32)  # far enough to fail often
    payload, _ = codec.encode(g, {}, _ctx())
    want = Dqsg(levels=3, bucket=B).decode(Dqsg(levels=3, bucket=B).encode(g, {}, _ctx())[0], info, _ctx())
    s1: dict[str, int] = {}
    s2: dict[str, int] = {}
    plain = codec.decode_with_side_info(payload, info, _ctx(), y, s1)
    fixed = codec.decode_with_side_info(payload, info, _ctx(), y, s2, constrain=True)
    assert s1 == s2 and s1["detectable_failures"] > 50  # the count is taken before repairing
    ok = plain == want
    assert np.array_equal(fixed[ok], want[ok])  # correct decodes are untouched
    assert np.count_nonzero(fixed != want) < np.count_nonzero(plain != want)  # some failures repaired
    steps = np.repeat(np.abs(g).reshape(-1, B).max(axis=1) / 3, B)
    assert (np.abs(fixed) <= 3.5 * steps * (1 + 1e-6)).all()  # every index in the admissible range


def test_m1_is_capped_where_float32_stops_holding_the_fine_index() -> None:
    Ndqsg(m1=2**20, m2=2**19)
    with pytest.raises(ValueError, match="1..1048576"):
        Ndqsg(m1=2**27, m2=1)


def test_validation_rejects_non_zero_padding_of_one_byte_blocks() -> None:
    from fedsim.codecs.packing import pack

    codec, n = Ndqsg(), 1003  # base 3: 5 symbols a byte, 2 padding symbols in the last block
    info = TensorInfo("w", (n,))
    good, _ = codec.encode(np.random.default_rng(2).standard_normal(n).astype(np.float32), {}, _ctx())
    validate_payload(codec, good, info)
    sym = np.zeros(1005, dtype=np.uint8)
    sym[-1] = 2
    with pytest.raises(PayloadError, match="padding"):
        validate_payload(codec, dict(good, sym=pack(sym, 3)), info)
