"""Sparse updates: the shared payload, top-k, random-k and error feedback.

The pieces follow GRACE's split (Xu et al., "GRACE: A Compressed Communication Framework
for Distributed Machine Learning", ICDCS 2021): a *sparsifier* decides what is sent
(:class:`TopK`, :class:`RandK`), a *memory* decides what is kept (:class:`ErrorFeedback`),
and :class:`SparseFormat` is the wire format both use.

The wire format (``idx``/``val``, or dense ``x`` for small tensors), its byte counts and
the server's checks are documented in :mod:`fedsim.codecs.sparse_format`.

Error feedback (Seide et al., "1-bit SGD", Interspeech 2014; Stich, Cordonnier, Jaggi,
"Sparsified SGD with Memory", NeurIPS 2018, Alg. 1; Karimireddy et al., "Error Feedback
Fixes SignSGD", ICML 2019, Alg. 2) wraps any codec ``C``::

    p  = C(x + e)                 # send the compressed corrected update
    e' = x + e - decode(p)        # keep what was not sent

so that nothing is ever lost: ``sum_t x_t = sum_t decode(p_t) + e_T``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from fedsim.registry import CODECS

from .base import Codec, CodecContext, Field, Payload, S, TensorInfo
from .sparse_format import (  # noqa: F401  (re-exported: the sparse codecs' public helpers)
    INDEX_CODINGS,
    VALUE_DTYPES,
    VARINT_MAX_BYTES,
    SparseFormat,
    check_density,
    num_selected,
    scatter,
    scatter_add,
    to_values,
    topk_indices,
    varint_decode,
    varint_encode,
)
from .states import EmptyState

# --------------------------------------------------------------------------- sparsifiers


class SparseCodec(Codec[S]):
    """What every sparsifier shares: the wire format, dense small tensors, decoding.

    Subclasses implement ``encode``; ``decode``, ``fields`` and ``check`` delegate to
    :class:`SparseFormat`, with :meth:`is_dense` deciding which tensors go dense.
    """

    def __init__(self, values: str = "float32", index_coding: str = "uint32", dense_small: bool = True) -> None:
        self.format = SparseFormat(values, index_coding)
        self.dense_small = bool(dense_small)

    def is_dense(self, info: TensorInfo) -> bool:
        """Whether ``info``'s tensor goes dense (small tensors: biases, norms)."""
        return self.dense_small and len(info.shape) <= 1

    def decode(self, payload: Payload, info: TensorInfo, ctx: CodecContext) -> np.ndarray:
        return self.format.decode(payload, info)

    def fields(self, info: TensorInfo) -> dict[str, Field]:
        return self.format.fields(info, self.is_dense(info))

    def check(self, payload: Payload, info: TensorInfo) -> None:
        self.format.check(payload, info)


class TopK(SparseCodec[EmptyState]):
    """Send the k = ceil(numel * density) entries of largest magnitude, exactly.

    Without memory this is biased; wrap it in :class:`ErrorFeedback` (the registered
    ``topk`` does) so that the rest is sent later (Stich et al., NeurIPS 2018).

    Parameters
    ----------
    density : float
        Fraction of entries sent, in (0, 1].
    values, index_coding
        Wire format (:class:`SparseFormat`).
    dense_small : bool
        Send tensors with ``ndim <= 1`` dense.
    """

    name = "topk-raw"

    def __init__(
        self,
        density: float = 0.01,
        *,
        values: str = "float32",
        index_coding: str = "uint32",
        dense_small: bool = True,
    ) -> None:
        super().__init__(values, index_coding, dense_small)
        self.density = check_density(density, "topk")

    def encode(self, x: np.ndarray, state: EmptyState, ctx: CodecContext) -> tuple[Payload, EmptyState]:
        if self.dense_small and x.ndim <= 1:
            return self.format.pack_dense(x), state
        flat = np.asarray(x, dtype=np.float32).reshape(-1)
        idx = topk_indices(flat, num_selected(flat.size, self.density))
        return self.format.pack(idx, flat[idx]), state

    def contraction_alpha(self, info: TensorInfo) -> float:
        """alpha with ``||C(x) - x||^2 <= (1 - alpha) ||x||^2`` for one tensor: ``k / numel``.

        Top-k keeps the k largest squares, at least a k/numel share of ``||x||^2``
        (EF21, NeurIPS 2021, Example 1); a tensor sent dense has alpha 1. Declared for
        float32 values only: float16 rounding adds an error the bound does not cover.
        """
        if self.format.values != "float32":
            raise ValueError(f"topk alpha is declared for float32 values only; got values={self.format.values!r}")
        if self.is_dense(info) or info.numel == 0:
            return 1.0
        return num_selected(info.numel, self.density) / info.numel  # alpha = k / numel


class RandK(SparseCodec[EmptyState]):
    """Send k = ceil(numel * density) entries chosen uniformly without replacement.

    The positions come from ``ctx.rng("randk")``. With ``scale=True`` the values are
    multiplied by d/k (d = numel), which makes the decoded tensor unbiased:
    ``E[decode(C(x))] = x`` since each entry is kept with probability k/d (Stich et al.,
    NeurIPS 2018, Def. 2.1 rand_k; Wangni et al., NeurIPS 2018). Unscaled, it is the
    contraction used under error feedback.

    Parameters
    ----------
    density : float
        Fraction of entries sent, in (0, 1].
    scale : bool
        Multiply values by numel / k (unbiased) or not (contractive).
    seeded_indices : bool
        Do not send the positions: the server regenerates them from the same
        ``ctx.rng("randk")``. Halves the payload; the payload is then ``{"val"}`` with
        exactly k entries.
    values, index_coding, dense_small
        As in :class:`TopK`.
    """

    name = "randk-raw"

    def __init__(
        self,
        density: float = 0.01,
        *,
        scale: bool = True,
        seeded_indices: bool = False,
        values: str = "float32",
        index_coding: str = "uint32",
        dense_small: bool = True,
    ) -> None:
        self.density = check_density(density, "randk")
        self.scale = bool(scale)
        self.seeded_indices = bool(seeded_indices)
        super().__init__(values, index_coding, dense_small)

    def positions(self, numel: int, ctx: CodecContext) -> np.ndarray:
        """The k positions of this (seed, round, client, tensor), sorted."""
        k = num_selected(numel, self.density)
        return np.sort(ctx.rng("randk").choice(numel, size=k, replace=False)).astype(np.int64)

    def encode(self, x: np.ndarray, state: EmptyState, ctx: CodecContext) -> tuple[Payload, EmptyState]:
        if self.dense_small and x.ndim <= 1:
            return self.format.pack_dense(x), state
        flat = np.asarray(x, dtype=np.float32).reshape(-1)
        idx = self.positions(flat.size, ctx)
        val = flat[idx]
        if self.scale:
            val = val * np.float32(flat.size / idx.size)  # unbiased: val * d / k
        if self.seeded_indices:
            return {"val": to_values(val, self.format.values)}, state
        return self.format.pack(idx, val), state

    def decode(self, payload: Payload, info: TensorInfo, ctx: CodecContext) -> np.ndarray:
        if self.seeded_indices and "val" in payload:
            return scatter(self.positions(info.numel, ctx), payload["val"], info.shape)
        return self.format.decode(payload, info)

    def fields(self, info: TensorInfo) -> dict[str, Field]:
        dense = self.is_dense(info)
        if self.seeded_indices and not dense:
            return {"val": Field(self.format.values, (num_selected(info.numel, self.density),))}
        return self.format.fields(info, dense)

    def check(self, payload: Payload, info: TensorInfo) -> None:
        if "idx" in payload:
            self.format.check(payload, info)


# --------------------------------------------------------------------------- memory


class ErrorFeedbackState(NamedTuple):
    """Error feedback's state: the residual ``e`` and the wrapped codec's own state.

    Stored as ``{"e", "inner.<key>", ...}`` (:func:`fedsim.codecs.states.state_arrays`)."""

    e: np.ndarray
    inner: Any


class ErrorFeedback(Codec[ErrorFeedbackState]):
    """Residual memory around any codec: send C(x + e), keep e' = x + e - decode(C(x + e)).

    The payload, fields and checks are the inner codec's, so the server decodes without
    knowing the memory exists ("only the tensors are communicated, the context stays
    local": GRACE's memory, Xu et al. 2021, Sec. III).

    Parameters
    ----------
    inner : Codec
        The compressor whose error is remembered.
    """

    def __init__(self, inner: Codec[Any]) -> None:
        if not isinstance(inner, Codec):
            raise TypeError(f"ErrorFeedback wraps a Codec; got {type(inner).__name__}")
        self.inner = inner
        self.name = f"ef({inner.name})"  # type: ignore[misc]  # an instance's name: the class has none

    def init(self, info: TensorInfo) -> ErrorFeedbackState:
        return ErrorFeedbackState(np.zeros(info.shape, dtype=np.float32), self.inner.init(info))

    def encode(self, x: np.ndarray, state: ErrorFeedbackState, ctx: CodecContext,
               ) -> tuple[Payload, ErrorFeedbackState]:
        y = np.asarray(x, dtype=np.float32) + state.e  # y = x + e
        payload, inner_state = self.inner.encode(y, state.inner, ctx)
        sent = self.inner.decode(payload, TensorInfo("ef", tuple(y.shape)), ctx)
        e = y - sent  # e' = x + e - decode(C(x + e))
        return payload, ErrorFeedbackState(e, inner_state)

    def decode(self, payload: Payload, info: TensorInfo, ctx: CodecContext) -> np.ndarray:
        return self.inner.decode(payload, info, ctx)

    def fields(self, info: TensorInfo) -> dict[str, Field]:
        return self.inner.fields(info)

    def check(self, payload: Payload, info: TensorInfo) -> None:
        self.inner.check(payload, info)


# --------------------------------------------------------------------------- registered


@CODECS.register("topk")
def topk(
    density: float = 0.01,
    error_feedback: bool = True,
    values: str = "float32",
    index_coding: str = "uint32",
    dense_small: bool = True,
) -> Codec[Any]:
    """Top-k sparsification, with error feedback unless ``error_feedback=False``."""
    codec: Codec[Any] = TopK(density, values=values, index_coding=index_coding, dense_small=dense_small)
    return ErrorFeedback(codec) if error_feedback else codec


@CODECS.register("randk")
def randk(
    density: float = 0.01,
    scale: bool = True,
    error_feedback: bool = False,
    seeded_indices: bool = False,
    values: str = "float32",
    index_coding: str = "uint32",
    dense_small: bool = True,
) -> Codec[Any]:
    """Random-k sparsification: unbiased (``scale=True``) and memoryless by default.

    Error feedback with a scaled (expanding, d/k > 1) compressor is not a contraction
    and can diverge; with ``error_feedback=True`` use ``scale=False``.
    """
    if error_feedback and scale:
        raise ValueError(
            "randk: error feedback needs a contractive compressor, but scale=True multiplies "
            "values by numel/k > 1; use scale=False with error_feedback=True"
        )
    codec: Codec[Any] = RandK(
        density, scale=scale, seeded_indices=seeded_indices, values=values,
        index_coding=index_coding, dense_small=dense_small,
    )
    return ErrorFeedback(codec) if error_feedback else codec
