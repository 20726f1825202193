"""NDQSG: nested dithered quantization, decoded with side information at the server.

A. Abdi and F. Fekri, "Nested Dithered Quantization for Communication Reduction in
Distributed Training", arXiv:1904.01197 (2019), section 4 (NDQSG); the nested lattice
scheme is that of R. Zamir, S. Shamai and U. Erez, "Nested linear/lattice codes for
structured multiterminal binning", IEEE Trans. Inf. Theory 48(6), 2002.

Per bucket, with fine step ``s = max(||g||_inf / M1, tiny)`` and coarse step ``rho*s``,
``rho = M1 // M2``::

    client:  t  = alpha*g/s + u,  q1 = round(t)           the fine (DQSG) index
             q  = q1 mod rho  in {0..rho-1}                 the coset index: rho symbols, packed
    server:  k  = round((alpha*y/s + u - q) / rho)          nearest coset member to alpha*y/s + u
             q1_hat = q + rho*k
             g_hat  = alpha*s*(q1_hat - u) + (1 - alpha^2)*y          ("mmse", the paper's)
                    = y + alpha*(r - s*rho*round(r/(s*rho))),  r = s*(q - u) - alpha*y

The last line is the decoder in the paper's form (Sec. 4); the two forms are equal (``r`` reduced modulo
the coarse step ``s*rho`` is ``s*(q1_hat - u) - alpha*y``). We evaluate the first form: for
``alpha = 1`` it is ``s*(q1_hat - u)``, computed by the same float operations as the DQSG
decoder, so a correct decode is *bit-identical* to DQSG's value for the same dither.

Corrections to the formulas as first written (the paper's Sec. 4 and the authors' TF-1 code):

* **Symbol offset.** ``q = q1 - rho*round(t/rho)`` lies in ``round([-rho/2, rho/2])``: that
  is ``rho + 1`` values for even ``rho`` (and for odd ``rho`` at the ties ``t/rho = k + 1/2``).
  We send the canonical coset index ``q1 mod rho`` in ``{0..rho-1}`` instead: exactly
  ``rho`` symbols for any ``rho``. The decoder only uses ``q`` modulo ``rho``, and
  ``q1 - rho*round(t/rho) = q1 (mod rho)``, so decoded values are unchanged.
* **alpha != 1.** With the fine index recovered (``q1_hat = q1``) the decoder returns
  ``(1 - alpha^2)*y + alpha^2*g + alpha*s*e`` with ``e`` uniform on ``[-1/2, 1/2]``: the
  Zamir-Shamai-Erez linear estimate, which trades a bias towards ``y`` for variance. It
  is *not* the DQSG value unless ``alpha = 1``. We keep it as ``estimator="mmse"`` (the
  paper's) and offer ``estimator="unbiased"``: ``g_hat = s*(q1_hat - u)/alpha = g + s*e/alpha``
  (unbiased, variance ``s^2/(12 alpha^2)``). In both, decoding is exact (``q1_hat = q1``)
  when ``alpha*|g - y| < s*(rho - 1)/2``: a smaller ``alpha`` widens the decodable region.
* ``rho = M1 // M2`` is an integer in the encoder *and* the decoder (the TF-1 code used
  ``M1 / M2`` in its decoder, wrong when ``M2`` does not divide ``M1``).

A decoding failure is a coordinate with ``q1_hat != q1``; it is then off by a non-zero
multiple of the coarse step (``alpha*s*rho`` in the decoded value). It happens exactly
when ``|alpha*(g - y)/s + e| >= rho/2``; given ``delta = alpha*(g - y)/s`` its probability
over the dither is ``clip(|delta| - (rho - 1)/2, 0, 1)`` (:func:`expected_failure_fraction`).

Wire format: ``sym`` (uint8, ``packed_nbytes(n, rho)``: base-``rho`` packed) and ``scale``
(float32 or float16, one per bucket, in :meth:`Ndqsg.scale_range`). The encoder clamps the
fine index to ``|q1| <= ceil(alpha*M1)`` (:func:`coset_symbols`). For ``M1 = 3, M2 = 1``: 1.6 bits + 32/bucket.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedsim.registry import CODECS

from . import buckets, kernels
from .base import CodecContext, Payload, TensorInfo
from .dither import DITHER_STREAM, check_length, uniform
from .dithered import Key, _reciprocal, _words, keyed_symbols, steps
from .packing import byte_digits, check_byte_packed
from .states import EmptyState
from .symbols import FLOAT32_MAX, FLOAT32_TINY, BucketSymbolCodec

ESTIMATORS = ("mmse", "unbiased")
MAX_M1 = 1 << 20  # |q1| <= alpha*M1 + 1 must be exact in float32
SIDE_CLIP = float(1 << 24)  # |alpha*y/s| is clipped here in the decoder (nested_fine_index)


class SideInformationRequired(RuntimeError):
    """``ndqsg`` was decoded without side information.

    Deliberately not a :class:`~fedsim.codecs.base.PayloadError`: the payload is fine, the
    caller is wrong (a strategy that does not know about nested decoding), and a wrapper
    that drops clients on PayloadError must not silently drop every nested client.
    """


def nested_quantize(
    g: np.ndarray,
    m1: int,
    rho: int,
    alpha: float,
    bucket: int,
    u: np.ndarray,
    scale_dtype: str = "float32",
) -> tuple[np.ndarray, np.ndarray]:
    """NDQSG encoder: coset indices ``q1 mod rho`` (uint8) and the per-bucket fine steps.

    Parameters
    ----------
    g : ndarray
        1-D float32 vector.
    m1 : int
        Fine levels: ``s = ||g||_inf / M1`` per bucket.
    rho : int
        Coarse/fine ratio (``>= 2``): the number of symbols.
    alpha : float
        Scaling of the input, ``t = alpha*g/s + u``.
    bucket : int
        Entries per scale.
    u : ndarray
        The dither, float32 in ``[-1/2, 1/2)``.
    scale_dtype : str
        "float32" or "float16" (steps rounded up to what is sent).

    Returns
    -------
    sym : ndarray of uint8 in ``[0, rho)``
    scale : ndarray of ``scale_dtype``, one per bucket
    """
    if not 2 <= rho <= 256:
        raise ValueError(f"nested_quantize needs 2 <= rho <= 256 (symbols in a uint8); got {rho}")
    g = np.asarray(g, dtype=np.float32).reshape(-1)
    scale = steps(g, m1, bucket, scale_dtype)
    return coset_symbols(g, _reciprocal(scale, alpha), rho, bucket, u, fine_bound(m1, alpha)), scale


def fine_bound(m1: int, alpha: float) -> int:
    """``ceil(alpha*M1)``: the largest ``|q1|`` the encoder sends (``|g/s| <= M1``)."""
    return math.ceil(alpha * m1)


def coset_symbols(g: np.ndarray, gain: np.ndarray, rho: int, bucket: int, u: np.ndarray, bound: int) -> np.ndarray:
    """``clip(floor(g*gain + u + 1/2), -bound, bound) mod rho`` (uint8), ``gain = alpha/s`` per bucket.

    The clip: at a bucket's largest entry float32 rounding can make ``alpha*g/s`` exceed
    ``alpha*M1`` by an ulp, and ``q1`` then ``bound + 1`` (about once in 10^7 buckets), an
    index the decoder's range repair (:func:`constrain_fine_index`) would move by ``rho``.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        w = buckets.scaled(g, gain, bucket, np.empty_like(g))  # alpha*g/s
    w += u  # t = alpha*g/s + u
    w += np.float32(0.5)
    np.floor(w, out=w)  # q1 = round(t) = floor(t + 1/2)
    w[~np.isfinite(w)] = 0.0  # a diverged client (non-finite scale): sent, the server rejects it
    np.clip(w, -bound, bound, out=w)  # |q1| <= ceil(alpha*M1)
    return _mod_rho(w, rho).astype(np.uint8)


def _mod_rho(w: np.ndarray, rho: int) -> np.ndarray:
    # q1 mod rho = q1 - rho*floor((q1 + 1/2)/rho), in place on integer-valued floats: the
    # 1/2 keeps floor away from the float error of multiplying by 1/rho (np.mod is ~50x slower)
    k = w + np.float32(0.5)
    k *= np.float32(1.0 / rho)
    np.floor(k, out=k)
    k *= np.float32(rho)
    w -= k
    return w


def fine_index(g: np.ndarray, scale: np.ndarray, alpha: float, bucket: int, u: np.ndarray) -> np.ndarray:
    """The encoder's fine index ``q1 = floor(alpha*g/s + u + 1/2)`` (float32, integer-valued)."""
    g = np.asarray(g, dtype=np.float32).reshape(-1)
    gain = np.float32(alpha) / scale.astype(np.float32)
    w = buckets.scaled(g, gain, bucket, np.empty_like(g))
    w += u
    w += np.float32(0.5)
    return np.floor(w, out=w)


def nested_fine_index(
    sym: np.ndarray, scale: np.ndarray, u: np.ndarray, y: np.ndarray, rho: int, alpha: float, bucket: int
) -> np.ndarray:
    """Server side: the member of the coset ``sym (mod rho)`` nearest ``alpha*y/s + u``.

    ``q1_hat = q + rho*round((alpha*y/s + u - q)/rho)`` (float32, integer-valued), with
    ``alpha*y/s`` clipped to ``[-2**24, 2**24]`` (:data:`SIDE_CLIP`): beyond, ``q1_hat`` is a
    detectable failure either way (``|q1| <= 2**20 + 1``), and the clip keeps it finite for
    any finite ``y`` and a valid step (:meth:`Ndqsg.scale_range`).
    """
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    q = sym.astype(np.float32)
    gain = np.float32(alpha) / scale.astype(np.float32)
    with np.errstate(over="ignore"):
        w = buckets.scaled(y, gain, bucket, np.empty_like(q))  # alpha*y/s
    np.clip(w, -SIDE_CLIP, SIDE_CLIP, out=w)  # far beyond any fine index: keeps q1_hat finite
    w += u
    w -= q
    w *= np.float32(1.0 / rho)
    np.rint(w, out=w)  # k = round((alpha*y/s + u - q)/rho)
    w *= np.float32(rho)
    w += q  # q1_hat = q + rho*k
    return w


def nested_dequantize(
    sym: np.ndarray,
    scale: np.ndarray,
    u: np.ndarray,
    y: np.ndarray,
    rho: int,
    alpha: float,
    bucket: int,
    estimator: str = "mmse",
) -> np.ndarray:
    """NDQSG decoder with side information ``y`` (float32, 1-D).

    ``mmse``: ``g_hat = alpha*s*(q1_hat - u) + (1 - alpha^2)*y`` (= the paper's
    ``y + alpha*(r - s*rho*round(r/(s*rho)))``, see the module docstring); ``unbiased``: ``s*(q1_hat - u)/alpha``.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}; got {estimator!r}")
    w = nested_fine_index(sym, scale, u, y, rho, alpha, bucket)
    return dequantize_fine_index(w, scale, u, y, alpha, bucket, estimator)


def dequantize_fine_index(
    q1_hat: np.ndarray, scale: np.ndarray, u: np.ndarray, y: np.ndarray, alpha: float, bucket: int, estimator: str
) -> np.ndarray:
    """The decoded value from a fine index ``q1_hat`` (float32, modified in place)."""
    w = q1_hat
    w -= u  # q1_hat - u
    s = scale.astype(np.float32)
    if estimator == "unbiased":
        return buckets.scale_inplace(w, s / np.float32(alpha), bucket)  # s*(q1_hat - u)/alpha
    buckets.scale_inplace(w, np.float32(alpha) * s, bucket)  # alpha*s*(q1_hat - u)
    if alpha != 1.0:
        w += np.float32(1.0 - alpha * alpha) * np.asarray(y, dtype=np.float32).reshape(-1)
    return w


def constrain_fine_index(q1_hat: np.ndarray, rho: int, bound: int) -> np.ndarray:
    """Move each out-of-range ``q1_hat`` by multiples of ``rho`` into ``[-bound, bound]`` (in place).

    The encoder's fine index obeys ``|q1| <= bound = ceil(alpha*M1)``, so a decoded index
    outside is certainly wrong (:func:`detectable_failures`); the coset member inside the
    range nearest to it is the likeliest one given ``y`` (the decode is then
    maximum-likelihood over the admissible indices). When ``2*bound + 1 >= rho`` every coset
    has a member in range. Indices already in range are unchanged, so every correct
    decode stays exact::

        q1_hat > b:   q1_hat - rho*ceil((q1_hat - b)/rho)
        q1_hat < -b:  q1_hat + rho*ceil((-b - q1_hat)/rho)
    """
    over = q1_hat > bound
    q1_hat[over] -= np.float32(rho) * np.ceil((q1_hat[over] - bound) / np.float32(rho))
    under = q1_hat < -bound
    q1_hat[under] += np.float32(rho) * np.ceil((-bound - q1_hat[under]) / np.float32(rho))
    return q1_hat


def encode(
    g: np.ndarray, m1: int, rho: int, alpha: float, bucket: int, key: Key, scale_dtype: str = "float32",
    pad_to: int | None = None, out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """NDQSG encoder with the counter-based dither of ``key`` (:func:`nested_quantize`, ``u = uniform(key, 0, n)``)."""
    return keyed_symbols(
        g, m1, alpha, bucket, key, scale_dtype, pad_to, out,
        compiled=lambda k, *a: k.nested_symbols(*a[:3], m1, float(alpha), rho, bucket, *a[3:]),
        reference=lambda x, gain, u: coset_symbols(x, gain, rho, bucket, u, fine_bound(m1, alpha)))


def decode(
    sym: np.ndarray, scale: np.ndarray, y: np.ndarray, m1: int, rho: int, alpha: float, bucket: int, key: Key,
    estimator: str = "mmse", constrain: bool = False, packed: bool = False,
) -> tuple[np.ndarray, int]:
    """NDQSG decoder with side information ``y`` and the dither of ``key``.

    Returns the decoded update (float32, 1-D) and its number of detectable failures
    (:func:`detectable_failures`, counted before ``constrain`` repairs them). The same
    values as :func:`nested_fine_index`, :func:`constrain_fine_index` and
    :func:`dequantize_fine_index` with ``u = uniform(key, 0, n)``.

    ``packed``: ``sym`` is the validated *packed* bytes of a one-byte-block base (rho 2, 3
    or 4; :func:`fedsim.codecs.packing.byte_digits`), read without unpacking; compiled
    path only (:func:`reads_packed`).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}; got {estimator!r}")
    n = check_length(y.size if packed else sym.size)
    y = np.ascontiguousarray(y, dtype=np.float32).reshape(-1)
    s = np.ascontiguousarray(scale, dtype=np.float32)
    bound = fine_bound(m1, alpha)
    out = np.empty(n, dtype=np.float32)
    k = kernels.jit()
    if k is not None:
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            gain = np.float32(alpha) / s
        fac = s / np.float32(alpha) if estimator == "unbiased" else np.float32(alpha) * s
        coef = np.float32(1.0 - alpha * alpha) if estimator == "mmse" and alpha != 1.0 else np.float32(0.0)
        table, nblocks = (byte_digits(rho), sym.size) if packed else (_NO_TABLE, 0)
        fails = kernels.parallel(k.nested_values, n, bucket, sym, table, nblocks, gain, fac, y, rho, bound, coef,
                                 constrain, bucket, *_words(key), out)
        return out, int(sum(fails))
    if packed:
        raise ValueError("nested.decode(packed=True) needs the compiled kernels (see reads_packed)")
    total = 0
    for a, b, ba, bb in buckets.chunks(n, bucket):
        u = uniform(key, a, b - a)
        q1_hat = nested_fine_index(sym[a:b], s[ba:bb], u, y[a:b], rho, alpha, bucket)
        total += detectable_failures(q1_hat, m1, alpha)
        if constrain:
            constrain_fine_index(q1_hat, rho, bound)
        out[a:b] = dequantize_fine_index(q1_hat, s[ba:bb], u, y[a:b], alpha, bucket, estimator)
    return out, total


_NO_TABLE = np.zeros((0, 256), dtype=np.uint8)


def reads_packed(rho: int) -> bool:
    """Whether :func:`decode` can read base-``rho`` symbols straight from the packed bytes."""
    return kernels.available() and byte_digits(rho) is not None


def decoding_failures(
    g: np.ndarray, y: np.ndarray, scale: np.ndarray, u: np.ndarray, rho: int, alpha: float, bucket: int
) -> int:
    """Exact count of coordinates whose fine index is decoded wrongly (``q1_hat != q1``).

    Needs the true ``g``: for simulation studies and tests. Each failure shifts the
    decoded value by a non-zero multiple of the coarse step ``alpha*s*rho``.
    """
    q1 = fine_index(g, scale, alpha, bucket, u)
    sym = _mod_rho(q1.copy(), rho).astype(np.uint8)
    q1_hat = nested_fine_index(sym, scale, u, y, rho, alpha, bucket)
    return int(np.count_nonzero(q1_hat != q1))


def expected_failure_fraction(delta: np.ndarray, rho: int) -> float:
    """Mean over coordinates of ``P(failure) = clip(|delta| - (rho - 1)/2, 0, 1)``.

    ``delta = alpha*(g - y)/s`` is the distance of the side information in fine steps;
    the probability is over the dither (the rounding error is uniform on [-1/2, 1/2]).
    """
    d = np.abs(np.asarray(delta, dtype=np.float64))
    return float(np.clip(d - (rho - 1) / 2.0, 0.0, 1.0).mean()) if d.size else 0.0


def estimate_failures_loo(
    references: Sequence[np.ndarray], m1: int, rho: int, alpha: float, bucket: int
) -> float:
    """Server-side estimate of the NDQSG failure fraction from the decoded reference group.

    Leave one out: each decoded reference update ``g_j`` plays a nested client whose side
    information is the mean of the other references; returns the mean of
    :func:`expected_failure_fraction` over them (``nan`` with fewer than 2 references).
    An estimate, slightly pessimistic: ``g_j`` carries its own DQSG noise (variance
    ``s^2/12``), and the real nested clients see the mean of *all* decoded updates.
    """
    refs = [np.asarray(r, dtype=np.float32).reshape(-1) for r in references]
    if len(refs) < 2:
        return float("nan")
    total = np.sum(refs, axis=0, dtype=np.float64)
    fractions = []
    for g in refs:
        y = (total - g) / (len(refs) - 1)
        s = steps(g, m1, bucket)
        delta = alpha * (g - y) / buckets.expand(s, g.size, bucket)
        fractions.append(expected_failure_fraction(delta, rho))
    return float(np.mean(fractions))


def detectable_failures(q1_hat: np.ndarray, m1: int, alpha: float) -> int:
    """Failures the server sees without the truth: ``|q1_hat| > ceil(alpha*M1)``.

    The encoder's fine index obeys ``|q1| <= ceil(alpha*M1)`` (``|g/s| <= M1``), so a
    decoded index beyond that is certainly wrong; a lower bound on the failure count.
    """
    return int(np.count_nonzero(np.abs(q1_hat) > fine_bound(m1, alpha)))


@CODECS.register("ndqsg")
class Ndqsg(BucketSymbolCodec):
    """Nested dithered quantized update (NDQSG): ``rho = M1 // M2`` symbols, packed.

    Plain :meth:`decode` raises :class:`SideInformationRequired`: the symbols alone do not
    determine the update (decoding with ``y = 0`` would silently return garbage for every
    coordinate with ``|g| >= s*(rho - 1)/2``). The server calls
    :meth:`decode_with_side_info` with ``y`` = the running mean of the updates it has
    already decoded this round (see the module docstring).

    Parameters
    ----------
    m1 : int
        Fine levels (step ``||g||_inf / M1``).
    m2 : int
        Coarse levels; ``rho = M1 // M2 >= 2``.
    alpha : float
        Input scaling, ``0 < alpha <= 1`` (1: decode = DQSG's value when exact).
    bucket : int
        Entries per scale.
    scale_dtype : str
        "float32" or "float16".
    estimator : str
        "mmse" (the paper's, biased towards ``y`` when ``alpha < 1``) or "unbiased".
    """

    name = "ndqsg"

    def __init__(
        self,
        m1: int = 3,
        m2: int = 1,
        alpha: float = 1.0,
        bucket: int = 512,
        scale_dtype: str = "float32",
        estimator: str = "mmse",
    ) -> None:
        for nm, v in (("m1", m1), ("m2", m2)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 1 <= v <= MAX_M1:
                raise ValueError(f"ndqsg: {nm} must be an int in 1..{MAX_M1} (the fine index is computed in "
                                 f"float32, exact below 2**24); got {v!r}")
        rho = int(m1) // int(m2)
        if not 2 <= rho <= 256:
            raise ValueError(
                f"ndqsg needs 2 <= rho = M1 // M2 <= 256 (rho symbols; rho = 1 sends nothing); "
                f"got M1={m1}, M2={m2}, rho={rho}"
            )
        if not 0.0 < float(alpha) <= 1.0:
            raise ValueError(
                f"ndqsg: alpha must be in (0, 1] (alpha > 1 only shrinks the decodable region "
                f"alpha*|g - y| < s*(rho - 1)/2); got {alpha}"
            )
        if estimator not in ESTIMATORS:
            raise ValueError(f"ndqsg: estimator must be one of {ESTIMATORS}; got {estimator!r}")
        self.m1, self.m2, self.rho = int(m1), int(m2), rho
        self.base = rho  # the packer's alphabet: the coset index
        self.alpha = float(alpha)
        self.bucket = buckets.check_bucket(bucket, "ndqsg")
        self.scale_dtype = buckets.check_scale_dtype(scale_dtype, "ndqsg")
        self.estimator = estimator

    def scale_range(self) -> tuple[float, float]:
        """Steps in ``[tiny, alpha*FLT_MAX/2**26]``: the encoder's floor is ``tiny`` (so
        ``alpha/s`` is finite), and with ``|q1_hat| < 2**25`` (:func:`nested_fine_index`'s clip)
        the decoded ``(q1_hat - u)*s/alpha`` or ``*alpha*s`` stays below ``FLT_MAX/2``: finite
        for any side information ``|y| <= FLT_MAX/4``."""
        return FLOAT32_TINY, self.alpha * FLOAT32_MAX / 2.0**26

    def encode(self, x: np.ndarray, state: EmptyState, ctx: CodecContext) -> tuple[Payload, EmptyState]:
        g = np.asarray(x, dtype=np.float32).reshape(-1)
        buf = self.symbol_scratch(g.size)
        sym, scale = encode(g, self.m1, self.rho, self.alpha, self.bucket, ctx.key(DITHER_STREAM), self.scale_dtype,
                            buf.size, buf)
        return {"sym": self.pack_symbols(sym, g.size), "scale": scale}, state

    def decode(self, payload: Payload, info: TensorInfo, ctx: CodecContext) -> np.ndarray:
        raise SideInformationRequired(
            f"ndqsg cannot decode {info.name!r} without side information: call "
            "decode_with_side_info(payload, info, ctx, y) with y = the running mean of the "
            "updates already decoded this round (fedsim.codecs.nested)"
        )

    def decode_with_side_info(
        self,
        payload: Payload,
        info: TensorInfo,
        ctx: CodecContext,
        y: np.ndarray,
        stats: dict[str, int] | None = None,
        constrain: bool = False,
    ) -> np.ndarray:
        """Decode a validated payload with side information ``y`` (``info.shape``).

        With ``stats`` (a dict), adds ``stats["detectable_failures"]`` (fine indices
        beyond ``ceil(alpha*M1)``: certainly wrong, see :func:`detectable_failures`) and
        ``stats["coordinates"]``. With ``constrain``, each such index is moved into the
        admissible range (:func:`constrain_fine_index`): a detectable failure is then
        repaired, correctly when the true index is the coset member nearest the range's
        edge; in-range decodes are unchanged.
        """
        y = np.asarray(y, dtype=np.float32)
        if y.size != info.numel:
            raise ValueError(f"side information for {info.name!r} has {y.size} entries, expected {info.numel}")
        if reads_packed(self.rho):  # one-byte blocks: the kernel reads the symbols from the bytes
            check_byte_packed(payload["sym"], info.numel, self.rho)
            sym, packed = payload["sym"], True
        else:
            sym, packed = self.unpack_symbols(payload, info), False
        out, fails = decode(sym, payload["scale"], y, self.m1, self.rho, self.alpha, self.bucket,
                            ctx.key(DITHER_STREAM), self.estimator, constrain, packed)
        if stats is not None:
            stats["detectable_failures"] = stats.get("detectable_failures", 0) + fails
            stats["coordinates"] = stats.get("coordinates", 0) + info.numel
        return out.reshape(info.shape)
