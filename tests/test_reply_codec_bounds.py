"""Regressions of issue 13 in the codecs: scales that decoded to inf, NDQSG's unclamped fine index.

Each test runs on the numpy path and, where numba is installed, on the compiled one: the
two must agree bit for bit (tests/test_kernels.py), so both are fixed the same way.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.codecs import kernels, nested
from fedsim.codecs.base import CodecContext, PayloadError, TensorInfo, validate_payload
from fedsim.codecs.dither import DITHER_STREAM, uniform
from fedsim.codecs.dithered import Dqsg, steps
from fedsim.codecs.nested import Ndqsg, fine_index
from fedsim.codecs.packing import pack
from fedsim.codecs.qsgd import Qsgd

F32_MAX = float(np.finfo(np.float32).max)
TINY = float(np.finfo(np.float32).tiny)


@pytest.fixture(params=["numpy", "compiled"])
def path(request):
    """Run the test on the numpy path, then (numba installed) on the compiled kernels."""
    if request.param == "compiled":
        pytest.importorskip("numba", reason="numba not installed: only the numpy path exists")
        kernels.use_jit(True)
        if not kernels.available():
            pytest.skip("FEDSIM_NO_JIT is set: no compiled path")
    else:
        kernels.use_jit(False)
    yield request.param
    kernels.use_jit(True)


def extreme_payload(codec, info, scale: float, symbol: int) -> dict[str, np.ndarray]:
    sym = np.full(info.numel, symbol, dtype=np.uint8)
    nb = -(-info.numel // codec.bucket)
    return {"sym": pack(sym, codec.base), "scale": np.full(nb, scale, dtype=np.float32)}


def test_a_dqsg_scale_that_decoded_to_inf_is_rejected(path):
    """Before: s = FLT_MAX passed ``s > 0`` and decoded ``s*(M - u)`` to inf."""
    codec, info, ctx = Dqsg(levels=3, bucket=4), TensorInfo("w", (8,)), CodecContext(0, 1, 2, 0)
    bad = extreme_payload(codec, info, F32_MAX, 2 * 3)  # symbol 2M: q = M
    with np.errstate(over="ignore"):
        assert not np.isfinite(codec.decode(bad, info, ctx)).all()  # what the old check let through
    with pytest.raises(PayloadError, match="must lie in"):
        validate_payload(codec, bad, info)
    low, high = codec.scale_range()
    assert (low, high) == (TINY, F32_MAX / 8)
    for s, sym in ((high, 0), (high, 6), (low, 6)):  # the extremes that pass decode finite
        ok = extreme_payload(codec, info, s, sym)
        validate_payload(codec, ok, info)
        assert np.isfinite(codec.decode(ok, info, ctx)).all()
    with pytest.raises(PayloadError, match="must lie in"):  # below the encoder's floor
        validate_payload(codec, extreme_payload(codec, info, 1e-45, 3), info)


@pytest.mark.parametrize("estimator", ["mmse", "unbiased"])
def test_ndqsg_decodes_finite_at_its_scale_bounds_whatever_the_side_information(path, estimator):
    """Before: a valid tiny scale with side information far away gave inf (alpha*y/s overflowed)."""
    codec = Ndqsg(m1=8, m2=2, alpha=0.5, bucket=4, estimator=estimator)
    info, ctx = TensorInfo("w", (8,)), CodecContext(0, 1, 2, 0)
    low, high = codec.scale_range()
    assert low == TINY and high == pytest.approx(0.5 * F32_MAX / 2**26)
    for scale in (low, 1e-30, 1.0, high):
        for y in (np.full(8, F32_MAX / 4, np.float32), np.full(8, -1e30, np.float32), np.zeros(8, np.float32)):
            for sym in (0, 3):
                p = extreme_payload(codec, info, scale, sym)
                validate_payload(codec, p, info)
                for constrain in (False, True):
                    out = codec.decode_with_side_info(p, info, ctx, y, constrain=constrain)
                    assert np.isfinite(out).all(), (scale, y[0], sym, constrain)
    with pytest.raises(PayloadError, match="must lie in"):
        validate_payload(codec, extreme_payload(codec, info, 2 * high, 0), info)


def test_ndqsg_side_clip_leaves_every_representable_index_alone(path):
    """The decoder's clip of alpha*y/s at 2**24 changes nothing while the fine index is exact."""
    rng = np.random.default_rng(4)
    n, rho, bucket = 4096, 4, 64
    y = (rng.standard_normal(n) * 1e3).astype(np.float32)
    scale = np.full(n // bucket, 1e-3, np.float32)  # |y/s| up to ~4e6 < 2**24
    u = uniform((1, 2), 0, n)
    sym = rng.integers(0, rho, n).astype(np.uint8)
    w = nested.nested_fine_index(sym, scale, u, y, rho, 1.0, bucket)
    q = sym.astype(np.float64)
    expected = q + rho * np.rint((y.astype(np.float64) / 1e-3 + u - q) / rho)
    assert np.abs(w - expected).max() <= rho  # the float32 rounding only, no clipping
    assert np.array_equal(w % rho, sym)


def test_qsgd_norms_are_bounded_below_overflow(path):
    codec, info = Qsgd(levels=2, bucket=4), TensorInfo("w", (8,))
    assert codec.scale_range() == (0.0, F32_MAX / 2)
    ok = {"sym": pack(np.full(8, 4, np.uint8), 5), "norm": np.full(2, F32_MAX / 2, np.float32)}
    validate_payload(codec, ok, info)
    assert np.isfinite(codec.decode(ok, info, CodecContext(0, 1, 2, 0))).all()
    with pytest.raises(PayloadError, match="must lie in"):
        validate_payload(codec, dict(ok, norm=np.full(2, F32_MAX, np.float32)), info)


def test_ndqsg_encoder_clamps_the_fine_index_at_a_buckets_max(path):
    """Before: float32 rounding of alpha*g/s at a bucket's max gave |q1| = ceil(alpha*M1) + 1,
    which the decoder's range repair turned into a jump of rho steps (a sign flip for small rho).

    With one entry a bucket every entry is its bucket's max; with M1 = 1024 an ulp of
    ``g/s`` is worth 1.2e-4 of the index, so the unclamped index overflows often enough to
    count, and with the clamp an honest client decoded with perfect side information is
    within half a step everywhere.
    """
    m1, m2, n = 1024, 8, 1 << 15
    codec, info, ctx = Ndqsg(m1=m1, m2=m2, bucket=1), TensorInfo("w", (n,)), CodecContext(3, 1, 4, 0)
    g = np.random.default_rng(7).uniform(-1, 1, n).astype(np.float32)
    scale = steps(g, m1, 1)
    u = uniform(ctx.key(DITHER_STREAM), 0, n)
    unclamped = fine_index(g, scale, 1.0, 1, u)
    assert np.count_nonzero(np.abs(unclamped) > m1) > 0  # the case happens in this sample
    payload, _ = codec.encode(g, {}, ctx)
    sym = codec.unpack_symbols(payload, info)
    assert np.array_equal(sym, np.mod(np.clip(unclamped, -m1, m1), codec.rho).astype(np.uint8))
    out = codec.decode_with_side_info(payload, info, ctx, g, constrain=True)
    assert np.all(np.abs(out - g) <= 0.5001 * scale)  # half a step (+ float32 rounding of s*(q1 - u)); was rho steps
