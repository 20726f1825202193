"""QSGD: unbiased stochastic quantization, the baseline for DQSG/NDQSG.

D. Alistarh, D. Grubic, J. Li, R. Tomioka and M. Vojnovic, "QSGD: Communication-Efficient
SGD via Gradient Quantization and Encoding", NeurIPS 2017, section 3.1, eq. (4):

    Q_s(v_i) = ||v||_2 * sign(v_i) * xi_i(v, s),
    xi_i = (l + 1)/s with probability |v_i|/||v||_2 * s - l, else l/s,
    where l = floor(|v_i|/||v||_2 * s).

Per bucket of ``bucket`` entries (the paper's "bucketing", section 3.1, d = 512 in its
experiments): ``E[Q_s(v)] = v`` (Lemma 3.1), ``E||Q_s(v) - v||^2 <= min(d/s^2, sqrt(d)/s) ||v||^2``.
The randomness (stochastic rounding) is the counter-based stream of ``ctx.key("qsgd")``
(:mod:`fedsim.codecs.dither`, shifted to ``[0, 1)``); the server does not need it.
Instead of the paper's Elias code we send the signed level ``sign*l`` in ``{-s..s}`` as the
symbol ``sign*l + s`` in ``[0, 2s]``, base-``(2s+1)`` packed (fixed length, like DQSG, so
the comparison is about the quantizer, not the entropy coder).

Wire format: ``sym`` (uint8, ``packed_nbytes(n, 2s+1)``), ``norm`` (float32/float16,
one per bucket). Decode: ``v_hat = norm * (sym - s) / s``.
"""

from __future__ import annotations

import numpy as np

from fedsim.registry import CODECS

from . import buckets, kernels
from .base import CodecContext, Payload, TensorInfo
from .dither import check_length, uniform01
from .packing import symbol_buffer
from .states import EmptyState
from .symbols import FLOAT32_MAX, BucketSymbolCodec

QSGD_STREAM = "qsgd"


def qsgd_quantize(
    v: np.ndarray, levels: int, bucket: int, r: np.ndarray, norm_dtype: str = "float32"
) -> tuple[np.ndarray, np.ndarray]:
    """QSGD encoder (eq. 4): symbols ``sign*l + s`` in ``[0, 2s]`` and the bucket norms.

    Parameters
    ----------
    v : ndarray
        1-D float32 vector.
    levels : int
        ``s``, the number of levels per sign.
    bucket : int
        Entries per norm.
    r : ndarray
        Uniform ``[0, 1)`` float32 draws, one per entry (the stochastic rounding).
    norm_dtype : str
        Wire dtype of the norms; the quantizer uses the norm as sent.
    """
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    norm = norms(v, bucket, norm_dtype)
    return qsgd_symbols(v, _gain(norm, levels), levels, bucket, r), norm


def norms(v: np.ndarray, bucket: int, norm_dtype: str = "float32") -> np.ndarray:
    """The bucket norms as sent (``norm_dtype``); ValueError if one overflows float16."""
    exact = buckets.l2norm(v, bucket)
    norm = exact.astype(norm_dtype)
    if norm_dtype == "float16" and np.isinf(norm[np.isfinite(exact)]).any():
        raise ValueError("qsgd: a bucket norm exceeds the float16 range; send float32 norms")
    return norm


def _gain(norm: np.ndarray, levels: int) -> np.ndarray:
    n32 = norm.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.where(n32 > 0, np.float32(levels) / n32, np.float32(0.0)).astype(np.float32)  # s/||v||


def qsgd_symbols(v: np.ndarray, gain: np.ndarray, levels: int, bucket: int, r: np.ndarray) -> np.ndarray:
    """``sign(v_i) * min(floor(|v_i| gain + r_i), s) + s`` (uint8), ``gain = s/||v||`` per bucket."""
    with np.errstate(invalid="ignore", over="ignore"):
        w = buckets.scaled(v, gain, bucket, np.empty_like(v))  # v_i/||v|| * s, in [-s, s]
    a = np.abs(w)
    a += r  # l + 1 with probability frac(|v_i| s/||v||): floor(a + r)
    np.floor(a, out=a)
    a[~np.isfinite(a)] = 0.0  # a diverged client (non-finite norm): sent, the server rejects it
    np.minimum(a, levels, out=a)  # float rounding can push |v_i|/||v|| an ulp past 1
    np.copysign(a, w, out=a)  # sign(v_i) * l
    a += np.float32(levels)  # symbol sign*l + s in [0, 2s]
    return a.astype(np.uint8)


def qsgd_dequantize(sym: np.ndarray, norm: np.ndarray, levels: int, bucket: int) -> np.ndarray:
    """QSGD decoder: ``norm * (sym - s) / s`` (float32, 1-D)."""
    w = np.subtract(sym, np.float32(levels), dtype=np.float32)  # sign*l, one pass
    return buckets.scale_inplace(w, norm.astype(np.float32) / np.float32(levels), bucket)


def encode(v: np.ndarray, levels: int, bucket: int, key: tuple[int, int], norm_dtype: str = "float32",
           pad_to: int | None = None, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """QSGD encoder with ``r`` = the counter-based stream of ``key`` on ``[0, 1)`` (:func:`qsgd_quantize`)."""
    v = np.ascontiguousarray(v, dtype=np.float32).reshape(-1)
    n = check_length(v.size)
    norm = norms(v, bucket, norm_dtype)
    gain = _gain(norm, levels)
    sym = symbol_buffer(max(n, pad_to or 0), out)
    sym[n:] = 0
    k = kernels.jit()
    if k is not None:
        kernels.parallel(k.qsgd_symbols, n, bucket, v, gain, levels, bucket, np.uint32(key[0]), np.uint32(key[1]), sym)
    else:
        for a, b, ba, bb in buckets.chunks(n, bucket):
            sym[a:b] = qsgd_symbols(v[a:b], gain[ba:bb], levels, bucket, uniform01(key, a, b - a))
    return sym, norm


def decode(sym: np.ndarray, norm: np.ndarray, levels: int, bucket: int) -> np.ndarray:
    """QSGD decoder over the whole tensor (:func:`qsgd_dequantize`, compiled when available)."""
    n = sym.size
    k = kernels.jit()
    if k is None:
        return qsgd_dequantize(sym, norm, levels, bucket)
    out = np.empty(n, dtype=np.float32)
    fac = norm.astype(np.float32) / np.float32(levels)
    kernels.parallel(k.qsgd_values, n, bucket, sym, fac, levels, bucket, out)
    return out


@CODECS.register("qsgd")
class Qsgd(BucketSymbolCodec):
    """QSGD with ``s`` levels per sign, bucketed L2 norms, fixed-length packed symbols.

    Parameters
    ----------
    levels : int
        ``s >= 1`` (``2s + 1`` symbols; ``s = 1``: ternary, 1.6 bits packed).
    bucket : int
        Entries per norm (the paper uses 512).
    scale_dtype : str
        Wire dtype of the norms, "float32" or "float16".
    """

    name = "qsgd"

    def __init__(self, levels: int = 3, bucket: int = 512, scale_dtype: str = "float32") -> None:
        if not isinstance(levels, (int, np.integer)) or isinstance(levels, bool) or not 1 <= levels <= 127:
            raise ValueError(f"qsgd: levels s must be an int in 1..127 (2s+1 symbols in a uint8); got {levels!r}")
        self.levels = int(levels)
        self.bucket = buckets.check_bucket(bucket, "qsgd")
        self.scale_dtype = buckets.check_scale_dtype(scale_dtype, "qsgd")
        self.base = 2 * self.levels + 1

    scale_field = "norm"

    def encode(self, x: np.ndarray, state: EmptyState, ctx: CodecContext) -> tuple[Payload, EmptyState]:
        v = np.asarray(x, dtype=np.float32).reshape(-1)
        buf = self.symbol_scratch(v.size)
        sym, norm = encode(v, self.levels, self.bucket, ctx.key(QSGD_STREAM), self.scale_dtype, buf.size, buf)
        return {"sym": self.pack_symbols(sym, v.size), "norm": norm}, state

    def decode(self, payload: Payload, info: TensorInfo, ctx: CodecContext) -> np.ndarray:
        return decode(self.unpack_symbols(payload, info), payload["norm"], self.levels, self.bucket).reshape(info.shape)

    def scale_range(self) -> tuple[float, float]:
        """Norms in ``[0, FLT_MAX/2]``: 0 for an all-zero bucket; decoded ``|x| <= norm*(1 + 2**-23)``."""
        return 0.0, FLOAT32_MAX / 2
