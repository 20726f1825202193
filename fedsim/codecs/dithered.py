"""DQSG: bucketed subtractive dithered quantization of an update.

A. Abdi and F. Fekri, "Nested Dithered Quantization for Communication Reduction in
Distributed Training", arXiv:1904.01197 (2019), section 3 (DQSG).

Per bucket of ``bucket`` consecutive entries of ``g`` (the last bucket may be short)::

    s     = max(||g||_inf / M, tiny)            the step; tiny keeps an all-zero bucket finite
    u     ~ U[-1/2, 1/2)^d                      counter-based, keyed by ctx.key("dither"):
                                                the server regenerates it (fedsim.codecs.dither)
    q     = round(g/s + u)  in {-M..M}          sent as the symbol q + M in [0, 2M]
    g_hat = s * (q - u)                         the server's decode

The error ``g_hat - g = s*(round(g/s + u) - (g/s + u))`` is uniform on ``[-s/2, s/2]``
and independent of ``g`` (Schuchman's condition holds for a uniform dither: the paper's
Theorem 1), hence unbiased with variance ``s^2/12`` per coordinate, for any fixed ``g``,
grid points included. Decoding with another dither leaves an error that depends on ``g``.

Rounding is ``floor(. + 1/2)`` (ties up), so with ``u`` in ``[-1/2, 1/2)`` and
``|g/s| <= M`` the index lies in ``{-M..M}``; a float rounding of ``g/s`` beyond ``M``
by an ulp is clamped into range. The step is ``max(||g||_inf/M, tiny)`` rather than
``||g||_inf/M + eps``: the same guard for an all-zero bucket, without changing any other
step.

Wire format (everything counted by :func:`~fedsim.codecs.base.payload_nbytes`):

``sym``   uint8, ``packed_nbytes(n, 2M+1)`` bytes: the symbols, base-``(2M+1)`` packed.
``scale`` float32 (or float16), one per bucket, in ``[tiny, FLT_MAX/(2M + 2)]``
          (:meth:`Dqsg.scale_range`: a valid payload decodes to finite values).

Nothing else crosses the wire: ``n`` comes from the tensor's shape, ``M``, ``bucket`` and
the scale dtype from the run's config, the dither from (seed, round, client, tensor).

Speed: with numba the codec runs compiled kernels in threads (:mod:`fedsim.codecs.kernels`);
without it, the numpy functions below chunk by chunk. Both give the same bytes and values.
Bits per coordinate: ``8*packed_nbytes(n, 2M+1)/n + 32*ceil(n/bucket)/n`` (float32
scales); for ``M = 3``, ``bucket = 512`` and ``n`` a multiple of 17*512: 2.824 + 0.0625.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedsim.registry import CODECS

from . import buckets, kernels
from .base import CodecContext, Payload, TensorInfo
from .dither import DITHER_STREAM, check_length, uniform
from .packing import symbol_buffer
from .states import EmptyState
from .symbols import FLOAT32_MAX, FLOAT32_TINY, BucketSymbolCodec

_TINY = float(np.finfo(np.float32).tiny)
Key = tuple[int, int]


def wire_scale(step: np.ndarray, scale_dtype: str) -> np.ndarray:
    """The step as sent, rounded *up* to ``scale_dtype`` so that ``|g|/s <= M`` still holds.

    Raises ``ValueError`` for a finite step beyond the dtype's range (float16: 65504).
    """
    if scale_dtype == "float32":
        return step.astype(np.float32, copy=False)
    wire = step.astype(scale_dtype)
    finite = np.isfinite(step)
    if np.isinf(wire[finite]).any():
        raise ValueError(f"a step exceeds the {scale_dtype} range; send float32 scales")
    low = finite & (wire.astype(np.float32) < step)
    wire[low] = np.nextafter(wire[low], np.asarray(np.inf, dtype=scale_dtype))
    return wire


def steps(g: np.ndarray, levels: float, bucket: int, scale_dtype: str = "float32") -> np.ndarray:
    """Per-bucket steps as sent: ``max(||g||_inf / levels, tiny)``, rounded up to ``scale_dtype``."""
    k = kernels.jit()
    if k is not None and g.size:
        amax = np.empty(buckets.n_buckets(g.size, bucket), dtype=np.float32)
        kernels.parallel(k.absmax, g.size, bucket, g, bucket, amax)
    else:
        amax = buckets.absmax(g, bucket)
    return wire_scale(np.maximum(amax / np.float32(levels), np.float32(_TINY)), scale_dtype)


def _reciprocal(scale: np.ndarray, numerator: float = 1.0) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return np.float32(numerator) / scale.astype(np.float32)


def symbols(g: np.ndarray, inv: np.ndarray, levels: int, bucket: int, u: np.ndarray) -> np.ndarray:
    """``q + M`` with ``q = clip(floor(g*inv + u + 1/2), -M, M)`` (uint8); ``inv = 1/s`` per bucket."""
    with np.errstate(over="ignore", invalid="ignore"):
        w = buckets.scaled(g, inv, bucket, np.empty_like(g))  # g/s
    w += u  # g/s + u
    # q = round(g/s + u) = floor(g/s + u + 1/2): the same float operations as the NDQSG
    # encoder's fine index, so both see the same q for the same dither
    w += np.float32(0.5)
    np.floor(w, out=w)
    w[~np.isfinite(w)] = 0.0  # a diverged client (non-finite scale): sent, the server rejects it
    np.clip(w, -levels, levels, out=w)  # an ulp past M from float rounding of g/s
    sym = w.astype(np.int8)
    sym += np.int8(levels)  # symbol q + M in [0, 2M]
    return sym.view(np.uint8)


def quantize(
    g: np.ndarray, levels: int, bucket: int, u: np.ndarray, scale_dtype: str = "float32"
) -> tuple[np.ndarray, np.ndarray]:
    """DQSG encoder with an explicit dither: symbols ``q + M`` in ``[0, 2M]`` (uint8), steps.

    Parameters
    ----------
    g : ndarray
        1-D float32 vector.
    levels : int
        ``M``: the index takes the ``2M + 1`` values ``-M..M``.
    bucket : int
        Entries per scale.
    u : ndarray
        The dither, float32 in ``[-1/2, 1/2)``, same length as ``g``.
    scale_dtype : str
        "float32" or "float16": the steps are rounded (up) to what is sent.

    Returns
    -------
    sym : ndarray of uint8, shape ``(n,)``
    scale : ndarray of ``scale_dtype``, shape ``(ceil(n/bucket),)``
    """
    g = np.asarray(g, dtype=np.float32).reshape(-1)
    scale = steps(g, levels, bucket, scale_dtype)
    return symbols(g, _reciprocal(scale), levels, bucket, u), scale


def dequantize(sym: np.ndarray, scale: np.ndarray, levels: int, bucket: int, u: np.ndarray) -> np.ndarray:
    """DQSG decoder ``g_hat = s * (q - u)`` with ``q = sym - M`` (float32, 1-D)."""
    w = np.subtract(sym, np.float32(levels), dtype=np.float32)  # q = sym - M, one pass
    w -= u  # q - u
    return buckets.scale_inplace(w, scale.astype(np.float32, copy=False), bucket)  # s * (q - u)


def encode(
    g: np.ndarray, levels: int, bucket: int, key: Key, scale_dtype: str = "float32", pad_to: int | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """DQSG encoder with the counter-based dither of ``key``: :func:`quantize` with ``u = uniform(key, 0, n)``.

    ``pad_to`` (>= n) sizes the symbol array for the packer; entries past ``n`` are 0.
    ``out``: a uint8 buffer to write the symbols into (see :func:`fedsim.codecs.packing.symbol_buffer`).
    """
    return keyed_symbols(
        g, levels, 1.0, bucket, key, scale_dtype, pad_to, out,
        compiled=lambda k, *a: k.dqsg_symbols(*a[:3], levels, bucket, *a[3:]),
        reference=lambda x, inv, u: symbols(x, inv, levels, bucket, u))


def keyed_symbols(
    g: np.ndarray, levels: float, numerator: float, bucket: int, key: Key, scale_dtype: str, pad_to: int | None,
    out: np.ndarray | None, compiled: Callable[..., None],
    reference: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """The encoders' common frame: steps ``||g||_inf / levels`` per bucket, then symbols.

    ``compiled(jit, g, scale, fit, k0, k1, sym, a, b)`` runs a kernel on entries ``[a, b)``
    (``fit``: the kernel computes the float32 steps itself, see :func:`kernel_steps`);
    ``reference(g_chunk, numerator / s, u)`` is the numpy path, run chunk by chunk with the
    dither of ``key``. Returns the symbols (padded with zeros to ``pad_to``) and the steps.
    """
    g = np.ascontiguousarray(g, dtype=np.float32).reshape(-1)
    n = check_length(g.size)
    sym = symbol_buffer(max(n, pad_to or 0), out)
    sym[n:] = 0
    k = kernels.jit()
    if k is not None:
        scale, fit = kernel_steps(g, levels, bucket, scale_dtype)
        kernels.parallel(lambda *a: compiled(k, *a), n, bucket, g, scale, fit, *_words(key), sym)
        return sym, _canonical_nan(scale.astype(scale_dtype, copy=False))
    scale = steps(g, levels, bucket, scale_dtype)
    factor = _reciprocal(scale, numerator)
    for a, b, ba, bb in buckets.chunks(n, bucket):
        sym[a:b] = reference(g[a:b], factor[ba:bb], uniform(key, a, b - a))
    return sym, _canonical_nan(scale)


def _canonical_nan(scale: np.ndarray) -> np.ndarray:
    """The steps with every NaN replaced by the one NaN ``np.nan`` (in place).

    A bucket with a NaN has a NaN step (the server rejects it), but which NaN bit pattern
    (sign, payload) depends on how the max was taken: numpy's max keeps the input's
    (x86 arithmetic makes the negative 0xFFC00000), the compiled kernel clears the sign.
    One pattern keeps the payload bytes of both paths equal.
    """
    nan = np.isnan(scale)
    if nan.any():
        scale[nan] = np.nan
    return scale


def kernel_steps(g: np.ndarray, levels: float, bucket: int, scale_dtype: str) -> tuple[np.ndarray, bool]:
    """The float32 steps for a compiled encoder, and whether the kernel is to compute them itself.

    float32 steps are computed by the kernel in the same pass as the symbols; steps sent
    in float16 must be rounded up before quantizing, so they are computed first.
    """
    if scale_dtype == "float32":
        return np.empty(buckets.n_buckets(g.size, bucket), dtype=np.float32), True
    return steps(g, levels, bucket, scale_dtype).astype(np.float32), False


def decode(sym: np.ndarray, scale: np.ndarray, levels: int, bucket: int, key: Key) -> np.ndarray:
    """DQSG decoder with the dither of ``key``: :func:`dequantize` with ``u = uniform(key, 0, n)``."""
    n = check_length(sym.size)
    s32 = np.ascontiguousarray(scale, dtype=np.float32)
    out = np.empty(n, dtype=np.float32)
    k = kernels.jit()
    if k is not None:
        kernels.parallel(k.dqsg_values, n, bucket, sym, s32, levels, bucket, *_words(key), out)
    else:
        for a, b, ba, bb in buckets.chunks(n, bucket):
            out[a:b] = dequantize(sym[a:b], s32[ba:bb], levels, bucket, uniform(key, a, b - a))
    return out


def _words(key: Key) -> tuple[np.uint32, np.uint32]:
    return np.uint32(key[0] & 0xFFFFFFFF), np.uint32(key[1] & 0xFFFFFFFF)


@CODECS.register("dqsg")
class Dqsg(BucketSymbolCodec):
    """Dithered quantized update (DQSG): ``2M + 1`` symbols a coordinate, packed.

    Parameters
    ----------
    levels : int
        ``M >= 1``; ``M = 3`` gives 7 symbols, 2.824 bits packed (``log2 7 = 2.807``).
    bucket : int
        Entries per scale (a few hundred: 512 adds 32/512 = 0.0625 bits a coordinate).
    scale_dtype : str
        "float32" (default) or "float16" (halves the scale overhead).
    """

    name = "dqsg"

    def __init__(self, levels: int = 3, bucket: int = 512, scale_dtype: str = "float32") -> None:
        if not isinstance(levels, (int, np.integer)) or isinstance(levels, bool) or not 1 <= levels <= 127:
            raise ValueError(f"dqsg: levels M must be an int in 1..127 (2M+1 symbols in a uint8); got {levels!r}")
        self.levels = int(levels)
        self.bucket = buckets.check_bucket(bucket, "dqsg")
        self.scale_dtype = buckets.check_scale_dtype(scale_dtype, "dqsg")
        self.base = 2 * self.levels + 1

    def scale_range(self) -> tuple[float, float]:
        """Steps in ``[tiny, FLT_MAX/(2M + 2)]``: the encoder's floor is ``tiny``, and the
        decoded ``|s*(q - u)| <= s*(M + 1/2)`` stays below ``FLT_MAX/2``."""
        return FLOAT32_TINY, FLOAT32_MAX / (2 * self.levels + 2)

    def encode(self, x: np.ndarray, state: EmptyState, ctx: CodecContext) -> tuple[Payload, EmptyState]:
        g = np.asarray(x, dtype=np.float32).reshape(-1)
        buf = self.symbol_scratch(g.size)
        sym, scale = encode(g, self.levels, self.bucket, ctx.key(DITHER_STREAM), self.scale_dtype, buf.size, buf)
        return {"sym": self.pack_symbols(sym, g.size), "scale": scale}, state

    def decode(self, payload: Payload, info: TensorInfo, ctx: CodecContext) -> np.ndarray:
        sym = self.unpack_symbols(payload, info)
        return decode(sym, payload["scale"], self.levels, self.bucket, ctx.key(DITHER_STREAM)).reshape(info.shape)
