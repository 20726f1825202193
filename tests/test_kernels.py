"""Compiled kernels (numba) against the numpy reference: bit-identical payloads and decodes.

An edge client without numba and a server with it must agree to the bit, so every test
here runs the same call both ways and compares exactly, including threaded splits.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from fedsim.codecs import dithered, kernels, nested
from fedsim.codecs.base import CodecContext, TensorInfo
from fedsim.codecs.dithered import Dqsg
from fedsim.codecs.nested import Ndqsg
from fedsim.codecs.packing import best_block, pack, unpack
from fedsim.codecs.qsgd import Qsgd

numba = pytest.importorskip("numba", reason="numba not installed (the numpy-only edge install): nothing to compare")
if os.environ.get("FEDSIM_NO_JIT", "") not in ("", "0"):  # use_jit(True) keeps to it: no compiled path
    pytest.skip("FEDSIM_NO_JIT is set: nothing to compare", allow_module_level=True)


@pytest.fixture(params=["inline", "threads"])
def split(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the compiled path in the calling thread, or split over 3 threads even for small tensors."""
    if request.param == "threads":
        monkeypatch.setattr(kernels, "MIN_PARALLEL", 1)
        kernels.set_threads(3)
    yield request.param
    kernels.set_threads(None)


def both(fn: Callable[[], Any]) -> tuple[Any, Any]:
    """``fn()`` on the numpy path, then on the compiled path."""
    kernels.use_jit(False)
    try:
        ref = fn()
    finally:
        kernels.use_jit(True)
    assert kernels.available()
    return ref, fn()


def assert_same(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), f"{np.count_nonzero(a != b)} entries differ"
    else:
        assert a == b


SIZES = [1, 7, 511, 512, 513, 17 * 512 + 5, 70_001]


def _update(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(n).astype(np.float32) * np.float32(10.0) ** rng.integers(-3, 3)
    g[rng.random(n) < 0.05] = 0.0  # zeros, and a few exact grid points
    return g


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("codec", [Dqsg(levels=3), Dqsg(levels=1, bucket=100, scale_dtype="float16"), Qsgd(levels=3)],
                         ids=["dqsg", "dqsg-m1-f16", "qsgd"])
def test_codec_round_trip_is_bit_identical(codec: Any, n: int, split: str) -> None:
    info, ctx, g = TensorInfo("w", (n,)), CodecContext(5, 2, 7, 1), _update(n, n)

    def run() -> tuple[Any, np.ndarray]:
        payload, _ = codec.encode(g, {}, ctx)
        codec.check(payload, info)
        return payload, codec.decode(payload, info, ctx)

    assert_same(*both(run))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("params", [{}, {"alpha": 0.5, "estimator": "unbiased"}, {"alpha": 0.7},
                                    {"m1": 4, "m2": 1, "alpha": 0.3, "bucket": 64}],
                         ids=["default", "unbiased", "mmse", "rho4-small-alpha"])
def test_ndqsg_round_trip_is_bit_identical(params: dict[str, Any], n: int, split: str) -> None:
    codec = Ndqsg(**params)
    info, ctx = TensorInfo("w", (n,)), CodecContext(5, 2, 7, 1)
    g = _update(n, n)
    y = g + np.random.default_rng(1).standard_normal(n).astype(np.float32) * np.float32(np.abs(g).max())

    def run() -> tuple[Any, ...]:
        payload, _ = codec.encode(g, {}, ctx)
        out = []
        for constrain in (False, True):
            stats: dict[str, int] = {}
            out.append((codec.decode_with_side_info(payload, info, ctx, y, stats, constrain), stats))
        return payload, out

    ref, fast = both(run)
    assert_same(ref, fast)
    assert ref[1][0][1]["detectable_failures"] > 0 or n < 1000  # poor side information: the repair path runs


def test_keyed_encode_equals_the_pure_quantizer_with_the_streams_dither() -> None:
    from fedsim.codecs.dither import uniform

    g, key = _update(5000, 3), (123, 456)
    u = uniform(key, 0, g.size)
    sym, scale = dithered.encode(g, 3, 512, key)
    ref_sym, ref_scale = dithered.quantize(g, 3, 512, u)
    assert_same((sym, scale), (ref_sym, ref_scale))
    assert_same(dithered.decode(sym, scale, 3, 512, key), dithered.dequantize(ref_sym, ref_scale, 3, 512, u))
    nsym, nscale = nested.encode(g, 3, 3, 0.5, 512, key)
    assert_same((nsym, nscale), nested.nested_quantize(g, 3, 3, 0.5, 512, u))


def test_non_finite_updates_encode_to_symbols_in_range(split: str) -> None:
    g = _update(3000, 1)
    g[5], g[2000] = np.nan, np.inf
    ctx = CodecContext(0, 1, 2, 0)
    for codec in (Dqsg(), Ndqsg()):
        ref, fast = both(lambda codec=codec: codec.encode(g, {}, ctx)[0])
        assert not np.isfinite(fast["scale"][[0, 3]]).any()  # the buckets with nan/inf: the server rejects
        assert np.array_equal(ref["sym"], fast["sym"])


@pytest.mark.parametrize("base", [2, 3, 5, 7, 9, 11, 13, 16, 17, 31, 61, 127, 255, 256])
def test_packer_kernels_match_numpy(base: int, split: str) -> None:
    rng = np.random.default_rng(base)
    k, _ = best_block(base)
    for n in (1, k - 1, k, 40 * k + 3, 100_003):
        sym = rng.integers(0, base, n).astype(np.uint8)
        ref, fast = both(lambda sym=sym: pack(sym, base))
        assert_same(ref, fast)
        back_ref, back = both(lambda fast=fast, n=n: unpack(fast, n, base))
        assert_same(back_ref, back)
        assert np.array_equal(back, sym)


@pytest.mark.parametrize("base", [3, 7])
def test_unpack_kernel_rejects_what_numpy_rejects(base: int) -> None:
    k, m = best_block(base)
    sym = np.zeros(5 * k, dtype=np.uint8)
    packed = pack(sym, base)
    bad = packed.copy()
    bad[2 * m:3 * m] = 0xFF  # block 2's value >= base**k
    for enabled in (False, True):
        kernels.use_jit(enabled)
        try:
            with pytest.raises(ValueError, match="not a valid packing"):
                unpack(bad, sym.size, base)
            with pytest.raises(ValueError, match="padding"):
                unpack(pack(np.ones(k, dtype=np.uint8), base), k - 1, base)  # a 1 where padding must be 0
        finally:
            kernels.use_jit(True)


def test_threads_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDSIM_CODEC_THREADS", "3")
    assert kernels.threads() == 3
    monkeypatch.delenv("FEDSIM_CODEC_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what Ray sets in a 1-CPU actor
    assert kernels.threads() == 1
    kernels.set_threads(2)
    try:
        assert kernels.threads() == 2
    finally:
        kernels.set_threads(None)
    with pytest.raises(ValueError, match="positive int"):
        kernels.set_threads(0)
    assert kernels.ranges(10, 4, 2) == [(0, 8), (8, 10)] and kernels.ranges(0, 4, 2) == []


def test_nan_steps_are_the_same_bytes_on_both_paths(split: str) -> None:
    # a NaN from arithmetic on x86 is the negative 0xFFC00000; numpy's max kept its sign,
    # the compiled absmax cleared it: the payload bytes differed (review of db157c9..0854534)
    g = _update(3000, 2)
    with np.errstate(invalid="ignore"):
        g[5] = np.float32(np.inf) - np.float32(np.inf)
    g[1500] = -np.float32(np.nan)
    ctx = CodecContext(0, 1, 2, 0)
    for codec in (Dqsg(), Dqsg(bucket=7, scale_dtype="float16"), Ndqsg(), Ndqsg(alpha=0.5, scale_dtype="float16")):
        ref, fast = both(lambda codec=codec: codec.encode(g, {}, ctx)[0])
        assert np.isnan(fast["scale"]).any()
        assert ref["scale"].tobytes() == fast["scale"].tobytes() and ref["sym"].tobytes() == fast["sym"].tobytes()


def test_rho_256_round_trips_on_both_paths() -> None:
    # base 256 (ndqsg with rho = 256 is allowed) crashed the numpy packer: np.uint8(256)
    codec, n = Ndqsg(m1=256, m2=1), 1000
    info, ctx, g = TensorInfo("w", (n,)), CodecContext(5, 2, 7, 1), _update(n, 4)

    def run() -> tuple[Any, np.ndarray]:
        payload, _ = codec.encode(g, {}, ctx)
        codec.check(payload, info)
        return payload, codec.decode_with_side_info(payload, info, ctx, g)

    ref, fast = both(run)
    assert_same(ref, fast)


def test_set_threads_while_other_threads_encode() -> None:
    # set_threads shut the pool down between another thread's _executor() and its map():
    # "RuntimeError: cannot schedule new futures after shutdown"
    import threading
    import time

    g = _update(4096, 5)
    want = dithered.encode(g, 3, 64, (1, 2))
    errors: list[str] = []
    done = [0]
    stop = threading.Event()

    def work() -> None:
        try:
            while not stop.is_set():
                sym, scale = dithered.encode(g, 3, 64, (1, 2))
                assert np.array_equal(sym, want[0]) and np.array_equal(scale, want[1])
                done[0] += 1
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(repr(err))

    saved = kernels.MIN_PARALLEL
    kernels.MIN_PARALLEL = 1
    workers = [threading.Thread(target=work) for _ in range(2)]
    try:
        for t in workers:
            t.start()
        end, i = time.monotonic() + 1.0, 0
        while time.monotonic() < end and not errors:
            kernels.set_threads(2 + i % 2)
            i += 1
    finally:
        stop.set()
        for t in workers:
            t.join()
        kernels.MIN_PARALLEL = saved
        kernels.set_threads(None)
    assert not errors, errors[:3]
    assert done[0] > 0


def test_unusable_numba_falls_back_to_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    # numba raises RuntimeError("cannot cache function ...: no locator available") at import
    # of _jit when neither the install dir nor ~/.cache is writable; that used to escape
    # kernels.jit() (it caught ImportError only) and fail every dqsg/ndqsg/qsgd call
    import sys

    from numba.core import caching

    import fedsim.codecs as package

    def read_only(self: Any) -> None:
        raise PermissionError(13, "Read-only file system", self.get_cache_path())

    monkeypatch.setattr(caching._CacheLocator, "ensure_cache_path", read_only)
    monkeypatch.delitem(sys.modules, "fedsim.codecs._jit")  # restored afterwards, with the package attribute
    monkeypatch.delattr(package, "_jit")
    g = _update(1000, 6)
    kernels.use_jit(True)
    try:
        with pytest.warns(RuntimeWarning, match="no locator available"):
            assert kernels.jit() is None
        sym, scale = dithered.encode(g, 3, 512, (1, 2))
    finally:
        kernels.use_jit(True)
    monkeypatch.undo()
    assert kernels.available()
    assert_same((sym, scale), dithered.encode(g, 3, 512, (1, 2)))


def test_a_huge_bucket_is_one_bucket_per_tensor_on_both_paths() -> None:
    g = _update(5000, 7)
    ctx = CodecContext(5, 2, 7, 1)
    for bucket in (2**61, 2**63, 2**70):
        codec = Dqsg(bucket=bucket)
        ref, fast = both(lambda codec=codec: codec.encode(g, {}, ctx)[0])
        assert_same(ref, fast)
        assert_same(fast, Dqsg(bucket=5000).encode(g, {}, ctx)[0])


@pytest.mark.parametrize("m1", [3, 4])  # rho 3 and 4: one-byte blocks, read straight from the bytes when compiled
def test_nested_decode_rejects_bad_packed_bytes_on_both_paths(m1: int) -> None:
    codec, n = Ndqsg(m1=m1, m2=1), 1003  # 1003 = not a multiple of k: padding symbols exist
    info, ctx = TensorInfo("w", (n,)), CodecContext(0, 1, 2, 0)
    g = _update(n, 5)
    payload, _ = codec.encode(g, {}, ctx)
    k = best_block(codec.rho)[0]
    bad_value = dict(payload, sym=payload["sym"].copy())
    bad_value["sym"][7] = 255  # >= rho**k
    padded = -(-n // k) * k
    sym = np.zeros(padded, dtype=np.uint8)
    sym[padded - 1] = 1  # a non-zero padding symbol
    bad_padding = dict(payload, sym=pack(sym, codec.rho))
    for enabled in (False, True):
        kernels.use_jit(enabled)
        try:
            cases = [(bad_padding, "padding")] + ([(bad_value, "not a valid packing")] if codec.rho**k < 256 else [])
            for bad, match in cases:  # base 4: every byte is a valid block
                with pytest.raises(ValueError, match=match):
                    codec.decode_with_side_info(bad, info, ctx, g)
            assert np.array_equal(codec.decode_with_side_info(payload, info, ctx, g),
                                  Dqsg(levels=m1).decode(Dqsg(levels=m1).encode(g, {}, ctx)[0], info, ctx))
        finally:
            kernels.use_jit(True)
