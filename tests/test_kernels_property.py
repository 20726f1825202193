"""Property test: the compiled (numba) and numpy paths agree on random shapes, parameters and values.

Payload bytes must be equal (an edge client without numba and a server with it share one
wire format); decoded values too. The one documented exception: the bit pattern of a NaN
decoded from a payload whose scale is NaN (the server rejects such a payload before
decoding, :func:`fedsim.codecs.base.validate_payload`), so decodes compare NaN as equal.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsim.codecs import kernels
from fedsim.codecs.base import CodecContext, TensorInfo
from fedsim.codecs.dithered import Dqsg
from fedsim.codecs.nested import Ndqsg
from fedsim.codecs.qsgd import Qsgd

pytest.importorskip("numba", reason="numba not installed (the numpy-only edge install): nothing to compare")
if os.environ.get("FEDSIM_NO_JIT", "") not in ("", "0"):  # use_jit(True) keeps to it: no compiled path
    pytest.skip("FEDSIM_NO_JIT is set: nothing to compare", allow_module_level=True)

SPECIAL = [0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 1e-45, -1e-40, 3e38, -3e38, 1.0, -1.0, 0.5]


@st.composite
def updates(draw: st.DrawFn) -> np.ndarray:
    n = draw(st.sampled_from([0, 1, 2, 3, 5, 16, 17, 100, 511, 513, 1000, 2049]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(n) * 10.0 ** draw(st.integers(-40, 37))
    style = draw(st.sampled_from(["plain", "grid", "sparse", "special", "float16"]))
    if style == "grid":  # entries on or near the quantizer's grid points
        g = rng.integers(-4, 5, n) * draw(st.floats(1e-3, 10.0))
    elif style == "sparse":
        g[rng.random(n) < 0.7] = 0.0
    elif style == "special" and n:
        idx = rng.integers(0, n, max(1, n // 50))
        g[idx] = rng.choice(np.array(SPECIAL), idx.size)
    elif style == "float16":
        with np.errstate(over="ignore"):
            g = g.astype(np.float16).astype(np.float64)
    layout = draw(st.sampled_from(["flat", "float64", "2d-transposed", "strided"]))
    if layout == "float64":
        return g
    g32 = np.asarray(g, dtype=np.float32)
    if layout == "2d-transposed" and n and n % 2 == 0:
        return g32.reshape(2, -1).T  # not contiguous
    if layout == "strided":
        out = np.zeros(2 * n, dtype=np.float32)
        out[::2] = g32
        return out[::2]
    return g32


@st.composite
def codecs(draw: st.DrawFn) -> Any:
    bucket = draw(st.sampled_from([1, 2, 3, 7, 64, 100, 512, 5000, 2**40]))
    scale_dtype = draw(st.sampled_from(["float32", "float16"]))
    kind = draw(st.sampled_from(["dqsg", "qsgd", "ndqsg"]))
    if kind == "dqsg":
        return Dqsg(levels=draw(st.integers(1, 127)), bucket=bucket, scale_dtype=scale_dtype)
    if kind == "qsgd":
        return Qsgd(levels=draw(st.integers(1, 127)), bucket=bucket, scale_dtype=scale_dtype)
    m2 = draw(st.sampled_from([1, 1, 2, 3, 1000]))
    rho = draw(st.integers(2, 16) | st.just(256))
    return Ndqsg(m1=rho * m2 + draw(st.integers(0, m2 - 1)), m2=m2, bucket=bucket, scale_dtype=scale_dtype,
                 alpha=draw(st.sampled_from([1.0, 0.5, 0.7, 0.013])),
                 estimator=draw(st.sampled_from(["mmse", "unbiased"])))


def _outcome(codec: Any, g: np.ndarray, y: np.ndarray) -> Any:
    info, ctx = TensorInfo("w", g.shape), CodecContext(3, 4, 5, 6)
    try:
        payload, _ = codec.encode(g, {}, ctx)
    except (ValueError, OverflowError) as err:  # e.g. a float16 scale overflow: the same on both paths
        return ("encode error", type(err).__name__)
    if isinstance(codec, Ndqsg):
        decoded = []
        for constrain in (False, True):
            stats: dict[str, int] = {}
            decoded.append((codec.decode_with_side_info(payload, info, ctx, y, stats, constrain), stats))
        return payload, decoded
    return payload, codec.decode(payload, info, ctx)


def _assert_same(a: Any, b: Any, exact: bool) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k], exact)
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, z in zip(a, b):
            _assert_same(x, z, exact)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        if exact:  # payload bytes, NaN bit patterns included
            assert a.tobytes() == b.tobytes()
        else:
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    else:
        assert a == b


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(codec=codecs(), g=updates(), threaded=st.booleans(), noise=st.floats(0.0, 3.0))
def test_compiled_and_numpy_paths_agree(codec: Any, g: np.ndarray, threaded: bool, noise: float) -> None:
    rng = np.random.default_rng(g.size)
    with np.errstate(all="ignore"):
        g32 = np.asarray(g, dtype=np.float32)
        spread = np.float32(np.nan_to_num(np.abs(g32), posinf=0.0).max(initial=0.0) * noise)
        y = np.nan_to_num(g32 + rng.standard_normal(g32.shape).astype(np.float32) * spread, nan=0.0,
                          posinf=0.0, neginf=0.0)  # the server's side information is finite
    saved = kernels.MIN_PARALLEL
    if threaded:
        kernels.MIN_PARALLEL = 1
        kernels.set_threads(3)
    try:
        with np.errstate(all="ignore"):
            kernels.use_jit(False)
            try:
                ref = _outcome(codec, g, y)
            finally:
                kernels.use_jit(True)
            assert kernels.available()
            fast = _outcome(codec, g, y)
    finally:
        kernels.MIN_PARALLEL = saved
        kernels.set_threads(None)
    if isinstance(ref[0], str):
        assert ref == fast
        return
    _assert_same(ref[0], fast[0], exact=True)
    _assert_same(ref[1], fast[1], exact=False)
