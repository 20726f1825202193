"""Contractive compressors with a known alpha, for EF21's step size (numpy only).

A compressor C is alpha-contractive when ``||C(x) - x||^2 <= (1 - alpha) ||x||^2`` for
every x (EF21, NeurIPS 2021, Definition 1). EF21's theoretical step size needs alpha,
so every compressor here carries it. These are deliberately tiny (``compress(x)``,
``alpha``, ``bits``); the wire format is the codec layer's business (``fedsim.codecs``),
and :class:`CodecCompressor` lets a registered codec stand in for C.

Ways to know alpha:

* Top-k on d coordinates: ``alpha = k/d`` (the k largest magnitudes keep at least a
  k/d share of ``||x||^2``).
* A compressor applied block by block (per tensor) with alphas ``alpha_b``:
  ``alpha = min_b alpha_b`` (:func:`blockwise_alpha`; sum the per-block inequalities).
* An unbiased compressor Q with ``E||Q(x) - x||^2 <= omega ||x||^2`` scaled by
  ``1/(1+omega)`` is contractive in expectation with ``alpha = 1/(1+omega)``
  (:func:`scaled_unbiased_alpha`).
* A codec can declare it: a method ``contraction_alpha(info) -> float``
  (:func:`codec_alpha`).

:func:`empirical_alpha` measures the worst contraction seen on sample vectors: an
upper bound on the true alpha, used by tests to check the declared ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np

__all__ = [
    "CodecCompressor",
    "Compressor",
    "Identity",
    "TopK",
    "blockwise_alpha",
    "codec_alpha",
    "empirical_alpha",
    "scaled_unbiased_alpha",
]

VALUE_BITS = 32  # a float32 value on the wire


class Compressor(Protocol):
    """What EF21 needs of a compressor."""

    alpha: float

    def compress(self, x: np.ndarray) -> np.ndarray:
        """C(x), same shape as x."""

    def bits(self, d: int) -> int:
        """Bits one compressed message of a d-vector costs on the wire."""


class Identity:
    """No compression: ``C(x) = x``, ``alpha = 1``; EF21 with it is gradient descent."""

    alpha = 1.0

    def compress(self, x: np.ndarray) -> np.ndarray:
        return np.array(x, copy=True)

    def bits(self, d: int) -> int:
        return VALUE_BITS * d

    def __repr__(self) -> str:
        return "Identity()"


class TopK:
    """Keep the k largest-magnitude coordinates: ``alpha = k/d`` (EF21, Example 1).

    Ties are broken towards the lower index (stable sort), so C is deterministic and
    positively homogeneous: ``C(t x) = t C(x)`` for ``t > 0``.

    Parameters
    ----------
    k : int
        Coordinates kept, ``1 <= k <= d``.
    d : int
        Dimension of the vectors it compresses.
    """

    def __init__(self, k: int, d: int) -> None:
        if not (isinstance(k, (int, np.integer)) and isinstance(d, (int, np.integer))):
            raise TypeError(f"TopK needs integer k and d; got k={k!r}, d={d!r}")
        if not 1 <= k <= d:
            raise ValueError(f"TopK needs 1 <= k <= d; got k={k}, d={d}")
        self.k = int(k)
        self.d = int(d)
        self.alpha = self.k / self.d  # alpha = k/d

    def indices(self, x: np.ndarray) -> np.ndarray:
        """The k kept positions, ascending (what a sparse message sends)."""
        x = np.asarray(x)
        if x.shape != (self.d,):
            raise ValueError(f"TopK(k={self.k}, d={self.d}) got a vector of shape {x.shape}")
        return np.sort(np.argsort(-np.abs(x), kind="stable")[: self.k])

    def compress(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        keep = self.indices(x)
        out = np.zeros_like(x)
        out[keep] = x[keep]
        return out

    def bits(self, d: int) -> int:
        """k float32 values plus k indices of ceil(log2 d) bits each.

        The papers count 32k bits per message (values only); the indices are real
        wire cost and are the same for every method that uses this compressor.
        """
        return self.k * (VALUE_BITS + max(1, math.ceil(math.log2(d))))

    def __repr__(self) -> str:
        return f"TopK(k={self.k}, d={self.d})"


def blockwise_alpha(alphas: Iterable[float]) -> float:
    """alpha of a compressor applied block by block: ``min_b alpha_b``.

    ``||C(x)-x||^2 = sum_b ||C_b(x_b)-x_b||^2 <= sum_b (1-alpha_b)||x_b||^2
    <= (1 - min_b alpha_b) ||x||^2``.
    """
    a = [float(v) for v in alphas]
    if not a or any(not (0.0 < v <= 1.0) for v in a):
        raise ValueError(f"need at least one alpha, each in (0, 1]; got {a}")
    return min(a)


def scaled_unbiased_alpha(omega: float) -> float:
    """alpha of ``Q(x)/(1+omega)`` for unbiased Q with variance omega: ``1/(1+omega)``.

    Contractive in expectation: ``E||Q(x)/(1+omega) - x||^2 = omega/(1+omega) ||x||^2``
    when ``E||Q(x) - x||^2 = omega ||x||^2`` (a standard fact, used throughout the EF21
    papers' discussion of compressors).
    """
    if not (omega >= 0 and math.isfinite(omega)):
        raise ValueError(f"omega must be finite and >= 0; got {omega!r}")
    return 1.0 / (1.0 + omega)  # alpha = 1 / (1 + omega)


def empirical_alpha(compress: Callable[[np.ndarray], np.ndarray], samples: Iterable[np.ndarray]) -> float:
    """``min_x 1 - ||C(x)-x||^2 / ||x||^2`` over ``samples``: an upper bound on alpha."""
    worst = 1.0
    for x in samples:
        nx = float(np.dot(x, x))
        if nx == 0.0:
            continue
        err = np.asarray(compress(x)) - x
        worst = min(worst, 1.0 - float(np.dot(err, err)) / nx)
    return worst


def codec_alpha(codec: Any, info: Any) -> float:
    """alpha of a fedsim codec for one tensor.

    A contractive codec declares ``contraction_alpha(info) -> float``; ``identity``
    is 1. Anything else is refused, since EF21's step size is undefined without it.
    """
    fn = getattr(codec, "contraction_alpha", None)
    if callable(fn):
        a = float(fn(info))
    elif getattr(codec, "name", "") == "identity":
        a = 1.0
    else:
        raise ValueError(
            f"codec {getattr(codec, 'name', type(codec).__name__)!r} does not declare "
            "contraction_alpha(info); EF21 needs a contractive compressor with known alpha "
            "(top-k: k/d; identity: 1)"
        )
    if not 0.0 < a <= 1.0:
        raise ValueError(f"codec alpha must be in (0, 1]; got {a}")
    return a


class CodecCompressor:
    """A stateless fedsim codec used as C: ``C(x) = decode(encode(x))``.

    EF21's ``g_i`` is the error feedback; a codec with memory of its own (its ``init``
    returns state) would add a second one and change the algorithm, so it is refused.
    The codec sees float32, as on the wire.

    Parameters
    ----------
    codec : fedsim.codecs.base.Codec
    info : fedsim.codecs.base.TensorInfo
        The (flat) tensor the codec encodes.
    ctx : fedsim.codecs.base.CodecContext
        Coordinates of the encode (for codecs with seeded randomness).
    alpha : float, optional
        Overrides :func:`codec_alpha`.
    """

    def __init__(self, codec: Any, info: Any, ctx: Any, alpha: float | None = None) -> None:
        if codec.init(info):
            raise ValueError(
                f"codec {codec.name!r} keeps state between rounds; EF21 needs a stateless "
                "compressor (its g_i already is the error feedback)"
            )
        self.codec, self.info, self.ctx = codec, info, ctx
        self.alpha = codec_alpha(codec, info) if alpha is None else float(alpha)
        self.last_payload: dict[str, np.ndarray] = {}

    def compress(self, x: np.ndarray) -> np.ndarray:
        """``decode(encode(x))``: exactly the vector the server will decode.

        The payload is kept in :attr:`last_payload`: the ClientApp sends that very
        payload, so the ``c_i`` the client adds to ``g_i`` is the one the server adds.
        """
        payload, _ = self.codec.encode(np.asarray(x, dtype=np.float32).reshape(self.info.shape), {}, self.ctx)
        self.last_payload = payload
        return self.codec.decode(payload, self.info, self.ctx).astype(np.float64).reshape(np.shape(x))

    def bits(self, d: int) -> int:
        """Bits of the last payload encoded (codec payloads size themselves)."""
        return 8 * int(sum(a.nbytes for a in self.last_payload.values()))
