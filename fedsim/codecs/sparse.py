"""Sparse updates: the shared payload, top-k, random-k and error feedback.

The pieces follow GRACE's split (Xu et al., "GRACE: A Compressed Communication Framework
for Distributed Machine Learning", ICDCS 2021): a *sparsifier* decides what is sent
(:class:`TopK`, :class:`RandK`), a *memory* decides what is kept (:class:`ErrorFeedback`),
and :class:`SparseFormat` is the wire format both use.

Wire format of one tensor (every byte is a numpy array of the payload, so
:func:`fedsim.codecs.base.payload_nbytes` counts all of it):

``idx``
    the positions sent, in the flattened (C-order) tensor, strictly increasing.
    ``index_coding="uint32"``: 4 bytes each. ``index_coding="delta-varint"``: the gaps
    ``idx[0], idx[1]-idx[0]-1, ...`` as unsigned LEB128 varints in a ``uint8`` array
    (1 byte for a gap < 128, 2 bytes below 16384, ...): about 2 bytes an entry at
    density 0.001 instead of 4.
``val``
    the values at those positions, ``float32`` or ``float16`` (``values=``).
``x`` (instead of ``idx``/``val``)
    the whole tensor, dense, in the values dtype: tensors with ``ndim <= 1`` (biases,
    norm scales) when ``dense_small=True``, as DGC does (Lin et al. 2018, Sec. 5).

The server checks a sparse payload before decoding it: indices in ``[0, numel)``,
strictly increasing (hence unique), ``len(idx) == len(val) <= numel``
(:meth:`SparseFormat.check`), values finite (:func:`~fedsim.codecs.base.validate_payload`).

Error feedback (Seide et al., "1-bit SGD", Interspeech 2014; Stich, Cordonnier, Jaggi,
"Sparsified SGD with Memory", NeurIPS 2018, Alg. 1; Karimireddy et al., "Error Feedback
Fixes SignSGD", ICML 2019, Alg. 2) wraps any codec ``C``::

    p  = C(x + e)                 # send the compressed corrected update
    e' = x + e - decode(p)        # keep what was not sent

so that nothing is ever lost: ``sum_t x_t = sum_t decode(p_t) + e_T``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedsim.registry import CODECS

from .base import Codec, CodecContext, Field, Payload, PayloadError, State, TensorInfo

VALUE_DTYPES = ("float32", "float16")
INDEX_CODINGS = ("uint32", "delta-varint")
FP16_MAX = float(np.finfo(np.float16).max)
UINT32_LIMIT = 2**32
VARINT_MAX_BYTES = 5  # ceil(32 / 7): a uint32 gap never needs more


# --------------------------------------------------------------------------- helpers


def num_selected(numel: int, density: float) -> int:
    """k = ceil(numel * density), clamped to [1, numel] (0 for an empty tensor).

    The product is rounded to 9 decimals first so that a float artefact such as
    ``0.1 * 30 = 3.0000000000000004`` does not turn k = 3 into 4.
    """
    if numel <= 0:
        return 0
    k = math.ceil(round(numel * density, 9))  # k = ceil(numel * density)
    return min(max(k, 1), numel)


def check_density(density: float, what: str) -> float:
    """Validate a density in (0, 1]; return it as float."""
    density = float(density)
    if not 0.0 < density <= 1.0:
        raise ValueError(f"{what}: density must be in (0, 1] (the fraction of entries sent); got {density}")
    return density


def to_values(x: np.ndarray, dtype: str) -> np.ndarray:
    """Cast to the wire dtype; refuse values float16 would turn into inf."""
    if dtype == "float16" and x.size and float(np.max(np.abs(x))) > FP16_MAX:
        raise PayloadError(f"float16 values: |x| exceeds {FP16_MAX}, the float16 range")
    return np.ascontiguousarray(x, dtype=dtype)


def topk_indices(a: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest entries of ``|a|`` (1-D), sorted increasingly, exact.

    Ties at the k-th magnitude are broken arbitrarily (``np.argpartition``).
    """
    n = a.size
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k >= n:
        return np.arange(n, dtype=np.int64)
    part = np.argpartition(np.abs(a), n - k)[n - k :]
    return np.sort(part).astype(np.int64, copy=False)


def scatter(idx: np.ndarray, val: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Dense float32 tensor of ``shape`` with ``val`` at flat positions ``idx``, 0 elsewhere."""
    numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
    out = np.zeros(numel, dtype=np.float32)
    out[idx] = val  # idx is unique (checked), so assignment == scatter-add into zeros
    return out.reshape(shape)


def scatter_add(acc: np.ndarray, idx: np.ndarray, val: np.ndarray, weight: float = 1.0) -> np.ndarray:
    """Server-side sparse aggregation: ``acc.flat[idx] += weight * val`` in place; returns acc.

    ``idx`` must be unique (every validated payload's is), so fancy-index ``+=`` is a
    correct scatter-add; the cost is O(len(idx)), not O(numel). FedAvg of sparse
    payloads is ``G = sum_k w_k * scatter(idx_k, val_k)`` (ALGORITHMS.md sec. 1, with
    w_k = 1/N), computed by calling this once per client on one zeroed ``acc``.
    """
    flat = acc.reshape(-1)
    flat[idx] += np.float32(weight) * val.astype(np.float32, copy=False)
    return acc


# --------------------------------------------------------------------------- varint


def varint_encode(n: np.ndarray) -> np.ndarray:
    """Unsigned LEB128 of each entry of ``n`` (non-negative, < 2**32), concatenated: uint8.

    Each value is written 7 bits at a time, least significant group first; the high bit
    of a byte is 1 when another byte of the same value follows.
    """
    n = np.asarray(n, dtype=np.uint64)
    if n.size == 0:
        return np.zeros(0, dtype=np.uint8)
    nbytes = np.ones(n.size, dtype=np.int64)
    for p in range(1, VARINT_MAX_BYTES):
        nbytes += n >= np.uint64(1 << (7 * p))
    start = np.cumsum(nbytes) - nbytes
    out = np.empty(int(nbytes.sum()), dtype=np.uint8)
    for p in range(VARINT_MAX_BYTES):
        sel = nbytes > p
        if not sel.any():
            break
        group = (n[sel] >> np.uint64(7 * p)) & np.uint64(0x7F)
        more = (nbytes[sel] > p + 1).astype(np.uint64) << np.uint64(7)  # continuation bit
        out[start[sel] + p] = (group | more).astype(np.uint8)
    return out


def varint_decode(buf: np.ndarray) -> np.ndarray:
    """Inverse of :func:`varint_encode` (uint64); raise PayloadError on a malformed buffer."""
    buf = np.asarray(buf)
    if buf.size == 0:
        return np.zeros(0, dtype=np.uint64)
    last = (buf & 0x80) == 0
    if not last[-1]:
        raise PayloadError("delta-varint indices: the last byte has its continuation bit set")
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if int(lengths.max()) > VARINT_MAX_BYTES:
        raise PayloadError(f"delta-varint indices: a value longer than {VARINT_MAX_BYTES} bytes")
    pos = np.arange(buf.size) - np.repeat(starts, lengths)  # byte position within its value
    parts = (buf & 0x7F).astype(np.uint64) << (7 * pos).astype(np.uint64)
    return np.add.reduceat(parts, starts)


# --------------------------------------------------------------------------- wire format


@dataclass(frozen=True)
class SparseFormat:
    """The sparse wire format of one tensor, shared by topk, randk and dgc.

    Parameters
    ----------
    values : {"float32", "float16"}
        dtype of the values sent.
    index_coding : {"uint32", "delta-varint"}
        How the positions are written (see the module docstring).
    """

    values: str = "float32"
    index_coding: str = "uint32"

    def __post_init__(self) -> None:
        if self.values not in VALUE_DTYPES:
            raise ValueError(f"sparse values must be one of {VALUE_DTYPES}; got {self.values!r}")
        if self.index_coding not in INDEX_CODINGS:
            raise ValueError(f"index_coding must be one of {INDEX_CODINGS}; got {self.index_coding!r}")

    # -- contract
    def fields(self, info: TensorInfo, dense: bool) -> dict[str, Field]:
        """Payload contract: ``{"x"}`` when ``dense``, else ``{"idx", "val"}``."""
        if dense:
            return {"x": Field(self.values, info.shape)}
        numel = info.numel
        if numel > UINT32_LIMIT:
            raise ValueError(f"{info.name}: {numel} entries cannot be indexed by uint32")
        if self.index_coding == "uint32":
            idx = Field("uint32", None, max_size=numel, low=0, high=max(numel - 1, 0))
        else:
            idx = Field("uint8", None, max_size=VARINT_MAX_BYTES * numel)
        return {"idx": idx, "val": Field(self.values, None, max_size=numel)}

    def check(self, payload: Payload, info: TensorInfo) -> None:
        """Cross-field checks of a sparse payload (after the per-field ones)."""
        if "x" in payload:
            return
        idx = self.indices(payload, info)
        if idx.size != payload["val"].size:
            raise PayloadError(
                f"{info.name}: {idx.size} indices but {payload['val'].size} values; they must pair up"
            )

    # -- client side
    def pack(self, idx: np.ndarray, val: np.ndarray) -> Payload:
        """Payload of sorted, unique positions ``idx`` and their values ``val``."""
        idx = np.asarray(idx, dtype=np.int64)
        if self.index_coding == "uint32":
            coded = idx.astype(np.uint32)
        else:
            gaps = np.diff(idx, prepend=-1) - 1  # gap_0 = idx_0, gap_i = idx_i - idx_{i-1} - 1
            coded = varint_encode(gaps)
        return {"idx": coded, "val": to_values(val, self.values)}

    def pack_dense(self, x: np.ndarray) -> Payload:
        """Dense payload of the whole tensor."""
        return {"x": to_values(x, self.values)}

    # -- server side
    def indices(self, payload: Payload, info: TensorInfo) -> np.ndarray:
        """Decode and check the positions: int64, strictly increasing, in [0, numel)."""
        raw = payload["idx"]
        numel = info.numel
        if self.index_coding == "uint32":
            idx = raw.astype(np.int64)
            if idx.size > 1 and not bool(np.all(np.diff(idx) > 0)):
                raise PayloadError(f"{info.name}: indices not strictly increasing (duplicates or unsorted)")
        else:
            gaps = varint_decode(raw)
            if gaps.size > numel:
                raise PayloadError(f"{info.name}: {gaps.size} indices, at most {numel} allowed")
            if gaps.size and int(gaps.max()) >= numel:
                raise PayloadError(f"{info.name}: index gap {int(gaps.max())} beyond {numel} entries")
            idx = np.cumsum(gaps.astype(np.int64) + 1) - 1  # idx_i = sum_{j<=i} (gap_j + 1) - 1
        if idx.size and (int(idx[0]) < 0 or int(idx[-1]) >= numel):
            raise PayloadError(f"{info.name}: index outside [0, {numel})")
        return idx

    def decode(self, payload: Payload, info: TensorInfo) -> np.ndarray:
        """Dense float32 tensor of ``info.shape`` from a validated payload."""
        if "x" in payload:
            return payload["x"].astype(np.float32).reshape(info.shape)
        return scatter(self.indices(payload, info), payload["val"], info.shape)


# --------------------------------------------------------------------------- sparsifiers


class SparseCodec(Codec):
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


class TopK(SparseCodec):
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

    def encode(self, x: np.ndarray, state: State, ctx: CodecContext) -> tuple[Payload, State]:
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


class RandK(SparseCodec):
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

    def encode(self, x: np.ndarray, state: State, ctx: CodecContext) -> tuple[Payload, State]:
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


class ErrorFeedback(Codec):
    """Residual memory around any codec: send C(x + e), keep e' = x + e - decode(C(x + e)).

    State: ``{"e": residual, **{"inner.<key>": inner state}}``. The payload, fields and
    checks are the inner codec's, so the server decodes without knowing the memory
    exists ("only the tensors are communicated, the context stays local").

    Parameters
    ----------
    inner : Codec
        The compressor whose error is remembered.
    """

    def __init__(self, inner: Codec) -> None:
        if not isinstance(inner, Codec):
            raise TypeError(f"ErrorFeedback wraps a Codec; got {type(inner).__name__}")
        self.inner = inner
        self.name = f"ef({inner.name})"  # type: ignore[misc]

    def init(self, info: TensorInfo) -> State:
        inner = {f"inner.{k}": v for k, v in self.inner.init(info).items()}
        return {"e": np.zeros(info.shape, dtype=np.float32), **inner}

    def encode(self, x: np.ndarray, state: State, ctx: CodecContext) -> tuple[Payload, State]:
        y = np.asarray(x, dtype=np.float32) + state["e"]  # y = x + e
        inner_state = _unprefix(state, "inner.")
        payload, inner_state = self.inner.encode(y, inner_state, ctx)
        sent = self.inner.decode(payload, TensorInfo("ef", tuple(y.shape)), ctx)
        e = y - sent  # e' = x + e - decode(C(x + e))
        return payload, {"e": e, **{f"inner.{k}": v for k, v in inner_state.items()}}

    def decode(self, payload: Payload, info: TensorInfo, ctx: CodecContext) -> np.ndarray:
        return self.inner.decode(payload, info, ctx)

    def fields(self, info: TensorInfo) -> dict[str, Field]:
        return self.inner.fields(info)

    def check(self, payload: Payload, info: TensorInfo) -> None:
        self.inner.check(payload, info)


def _unprefix(state: Mapping[str, np.ndarray], prefix: str) -> State:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


# --------------------------------------------------------------------------- registered


@CODECS.register("topk")
def topk(
    density: float = 0.01,
    error_feedback: bool = True,
    values: str = "float32",
    index_coding: str = "uint32",
    dense_small: bool = True,
) -> Codec:
    """Top-k sparsification, with error feedback unless ``error_feedback=False``."""
    codec: Codec = TopK(density, values=values, index_coding=index_coding, dense_small=dense_small)
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
) -> Codec:
    """Random-k sparsification: unbiased (``scale=True``) and memoryless by default.

    Error feedback with a scaled (expanding, d/k > 1) compressor is not a contraction
    and can diverge; with ``error_feedback=True`` use ``scale=False``.
    """
    if error_feedback and scale:
        raise ValueError(
            "randk: error feedback needs a contractive compressor, but scale=True multiplies "
            "values by numel/k > 1; use scale=False with error_feedback=True"
        )
    codec: Codec = RandK(
        density, scale=scale, seeded_indices=seeded_indices, values=values,
        index_coding=index_coding, dense_small=dense_small,
    )
    return ErrorFeedback(codec) if error_feedback else codec
