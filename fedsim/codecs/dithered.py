"""DQSG: bucketed subtractive dithered quantization of an update.

A. Abdi and F. Fekri, "Nested Dithered Quantization for Communication Reduction in
Distributed Training", arXiv:1904.01197 (2019), section 3 (DQSG). See also
``/work/shared/ALGORITHMS.md`` section 4.

Per bucket of ``bucket`` consecutive entries of ``g`` (the last bucket may be short)::

    s     = max(||g||_inf / M, tiny)            the step; tiny keeps an all-zero bucket finite
    u     ~ U[-1/2, 1/2)^d                      from ctx.rng("dither"): the server redraws it
    q     = round(g/s + u)  in {-M..M}          sent as the symbol q + M in [0, 2M]
    g_hat = s * (q - u)                         the server's decode

The error ``g_hat - g = s*(round(g/s + u) - (g/s + u))`` is uniform on ``[-s/2, s/2]``
and independent of ``g`` (Schuchman's condition holds for a uniform dither: the paper's
Theorem 1), hence unbiased with variance ``s^2/12`` per coordinate, for any fixed ``g``,
grid points included. Decoding with another dither leaves an error that depends on ``g``.

Rounding is ``floor(. + 1/2)`` (ties up), so with ``u`` in ``[-1/2, 1/2)`` and
``|g/s| <= M`` the index lies in ``{-M..M}``; a float rounding of ``g/s`` beyond ``M``
by an ulp is clamped into range. The step is ``max(||g||_inf/M, tiny)`` rather than
ALGORITHMS.md's ``||g||_inf/M + eps``: the same guard for an all-zero bucket, without
changing any other step.

Wire format (everything counted by :func:`~fedsim.codecs.base.payload_nbytes`):

``sym``   uint8, ``packed_nbytes(n, 2M+1)`` bytes: the symbols, base-``(2M+1)`` packed.
``scale`` float32 (or float16), one per bucket.

Nothing else crosses the wire: ``n`` comes from the tensor's shape, ``M``, ``bucket`` and
the scale dtype from the run's config, the dither from (seed, round, client, tensor).
Bits per coordinate: ``8*packed_nbytes(n, 2M+1)/n + 32*ceil(n/bucket)/n`` (float32
scales); for ``M = 3``, ``bucket = 512`` and ``n`` a multiple of 17*512: 2.824 + 0.0625.
"""

from __future__ import annotations

import numpy as np

from fedsim.registry import CODECS

from . import buckets
from .base import Codec, CodecContext, Field, Payload, PayloadError, State, TensorInfo
from .packing import pack, packed_nbytes, unpack

DITHER_STREAM = "dither"
_TINY = float(np.finfo(np.float32).tiny)


def draw_dither(rng: np.random.Generator, n: int) -> np.ndarray:
    """The subtractive dither ``u ~ U[-1/2, 1/2)^n`` (float32, 2**-24 resolution)."""
    u = rng.random(n, dtype=np.float32)
    u -= np.float32(0.5)
    return u


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


def quantize(
    g: np.ndarray, levels: int, bucket: int, u: np.ndarray, scale_dtype: str = "float32"
) -> tuple[np.ndarray, np.ndarray]:
    """DQSG encoder: symbols ``q + M`` in ``[0, 2M]`` (uint8) and the per-bucket steps.

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
    # s = max(||g||_inf / M, tiny) per bucket, as it will be sent
    step = np.maximum(buckets.absmax(g, bucket) / np.float32(levels), np.float32(_TINY))
    scale = wire_scale(step, scale_dtype)
    s32 = scale.astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        inv = np.float32(1.0) / s32
        w = buckets.scaled(g, inv, bucket, np.empty_like(g))  # g/s
    w += u  # g/s + u
    # q = round(g/s + u) = floor(g/s + u + 1/2): the same float operations as the NDQSG
    # encoder's fine index, so both see the same q for the same dither
    w += np.float32(0.5)
    np.floor(w, out=w)
    if not np.isfinite(scale).all():  # a diverged client: send it, the server rejects it
        w[~np.isfinite(w)] = 0.0
    np.clip(w, -levels, levels, out=w)  # an ulp past M from float rounding of g/s
    sym = w.astype(np.int8)
    sym += np.int8(levels)  # symbol q + M in [0, 2M]
    return sym.view(np.uint8), scale


def dequantize(sym: np.ndarray, scale: np.ndarray, levels: int, bucket: int, u: np.ndarray) -> np.ndarray:
    """DQSG decoder ``g_hat = s * (q - u)`` with ``q = sym - M`` (float32, 1-D)."""
    w = np.subtract(sym, np.float32(levels), dtype=np.float32)  # q = sym - M, one pass
    w -= u  # q - u
    return buckets.scale_inplace(w, scale.astype(np.float32, copy=False), bucket)  # s * (q - u)


def check_scales(scale: np.ndarray, where: str) -> None:
    """Steps must be finite (checked by validate_payload) and strictly positive."""
    if scale.size and not (scale > 0).all():
        raise PayloadError(f"{where}: bucket scales must be > 0; got min {float(scale.min())}")


@CODECS.register("dqsg")
class Dqsg(Codec):
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

    def encode(self, x: np.ndarray, state: State, ctx: CodecContext) -> tuple[Payload, State]:
        g = np.asarray(x, dtype=np.float32).reshape(-1)
        rng = ctx.rng(DITHER_STREAM)
        sym = np.empty(g.size, dtype=np.uint8)
        scale = np.empty(buckets.n_buckets(g.size, self.bucket), dtype=self.scale_dtype)
        for a, b, ba, bb in buckets.chunks(g.size, self.bucket):  # the dither is drawn chunk by chunk
            sym[a:b], scale[ba:bb] = quantize(g[a:b], self.levels, self.bucket, draw_dither(rng, b - a), self.scale_dtype)
        return {"sym": pack(sym, self.base), "scale": scale}, state

    def decode(self, payload: Payload, info: TensorInfo, ctx: CodecContext) -> np.ndarray:
        n = info.numel
        sym = unpack(payload["sym"], n, self.base)
        rng = ctx.rng(DITHER_STREAM)
        out = np.empty(n, dtype=np.float32)
        for a, b, ba, bb in buckets.chunks(n, self.bucket):
            out[a:b] = dequantize(sym[a:b], payload["scale"][ba:bb], self.levels, self.bucket, draw_dither(rng, b - a))
        return out.reshape(info.shape)

    def fields(self, info: TensorInfo) -> dict[str, Field]:
        n = info.numel
        return {
            "sym": Field("uint8", (packed_nbytes(n, self.base),)),
            "scale": Field(self.scale_dtype, (buckets.n_buckets(n, self.bucket),)),
        }

    def check(self, payload: Payload, info: TensorInfo) -> None:
        check_scales(payload["scale"], f"{info.name}.scale")
        try:
            unpack(payload["sym"], info.numel, self.base)  # strict: every block < base**k
        except ValueError as err:
            raise PayloadError(f"{info.name}.sym: {err}") from err

    def bits_per_coordinate(self, n: int) -> float:
        """Bits sent per coordinate for a tensor of ``n`` entries (symbols + scales)."""
        nbytes = packed_nbytes(n, self.base) + buckets.n_buckets(n, self.bucket) * np.dtype(self.scale_dtype).itemsize
        return 8.0 * nbytes / n
