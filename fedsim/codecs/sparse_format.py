"""The sparse wire format shared by top-k, random-k and DGC (numpy only).

One tensor's payload (every byte is a numpy array of the payload, so
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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .base import Field, Payload, PayloadError, TensorInfo

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
    payloads is ``G = sum_k w_k * scatter(idx_k, val_k)`` (FedAvg, McMahan et al., AISTATS
    2017, with w_k = 1/N), computed by calling this once per client on one zeroed ``acc``.
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
