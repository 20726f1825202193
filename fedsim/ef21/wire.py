"""EF21's messages on the wire (numpy only: the client and the server share this code).

EF21 works on the model as one flat vector of d coordinates (the tensors of the
model's state dict, concatenated in order). A message ``c_i`` crosses the wire as

``dense`` (:class:`DenseWire`)
    ``{"ef21.x": (d,) float32|float64}``: a client's first message, and every message
    with the identity compressor (alpha = 1);
``topk`` (:class:`TopKWire`)
    ``{"ef21.idx": (k,) uint32 ascending, "ef21.val": (k,) float32|float64}``: Top-k
    over the whole vector (alpha = k/d; :class:`fedsim.ef21.compressors.TopK`);
``codec`` (:class:`CodecWire`)
    the run's registered codec applied per tensor, keys ``"<tensor>.<field>"`` as for
    every fedsim codec; alpha = the smallest per-tensor alpha the codec declares
    (:func:`fedsim.ef21.compressors.codec_alpha`, :func:`blockwise_alpha`).

Every wire returns, with the payload, the vector *as the server will decode it*
(float32 rounding included), which is what the client adds to its state: both sides
add the same ``c_i``, so ``g == (1/n) sum_i h_i`` holds to float64 rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from fedsim.codecs.base import Payload, PayloadError, TensorInfo
from fedsim.codecs.model import contexts, decode_update, flatten, validate_update
from fedsim.keys import EF21_IDX, EF21_VAL, EF21_X

from .compressors import TopK, blockwise_alpha, codec_alpha

__all__ = ["CodecWire", "DenseWire", "TopKWire", "Wire", "WIRE_DTYPES"]

WIRE_DTYPES = ("float32", "float64")


class Wire(Protocol):
    """How one kind of EF21 message is encoded, checked and decoded."""

    alpha: float

    def encode(self, v: np.ndarray, seed: int, rnd: int, client: int) -> tuple[Payload, np.ndarray]:
        """``(payload, C(v) as decoded, float64)``."""

    def validate(self, payload: Payload) -> None:
        """Raise PayloadError if ``payload`` is not a well-formed message of this kind."""

    def decode(self, payload: Payload, seed: int, rnd: int, client: int) -> np.ndarray:
        """The float64 vector of a validated payload."""


def _check_dtype(dtype: str) -> np.dtype:
    if dtype not in WIRE_DTYPES:
        raise ValueError(f"EF21 wire dtype must be one of {WIRE_DTYPES}; got {dtype!r}")
    return np.dtype(dtype)


def _expect_keys(payload: Payload, keys: set[str]) -> None:
    if set(payload) != keys:
        raise PayloadError(f"EF21 message: expected keys {sorted(keys)}, got {sorted(payload)}")


def _expect(arr: np.ndarray, key: str, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.shape != shape:
        got = (getattr(arr, "dtype", type(arr).__name__), getattr(arr, "shape", None))
        raise PayloadError(f"{key}: expected {dtype} of shape {shape}, got {got[0]} of shape {got[1]}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise PayloadError(f"{key}: non-finite values")


class DenseWire:
    """The whole vector, uncompressed: ``C = identity``, ``alpha = 1``."""

    alpha = 1.0

    def __init__(self, d: int, dtype: str = "float32") -> None:
        self.d, self.dtype = int(d), _check_dtype(dtype)

    def encode(self, v: np.ndarray, seed: int = 0, rnd: int = 0, client: int = 0) -> tuple[Payload, np.ndarray]:
        x = np.ascontiguousarray(v, dtype=self.dtype)
        return {EF21_X: x}, x.astype(np.float64)

    def validate(self, payload: Payload) -> None:
        _expect_keys(payload, {EF21_X})
        _expect(payload[EF21_X], EF21_X, self.dtype, (self.d,))

    def decode(self, payload: Payload, seed: int = 0, rnd: int = 0, client: int = 0) -> np.ndarray:
        return payload[EF21_X].astype(np.float64)


class TopKWire:
    """Top-k of the whole vector as (ascending uint32 positions, values): ``alpha = k/d``."""

    def __init__(self, k: int, d: int, dtype: str = "float32") -> None:
        self.topk = TopK(k, d)
        self.k, self.d, self.dtype = self.topk.k, self.topk.d, _check_dtype(dtype)
        self.alpha = self.topk.alpha  # alpha = k/d

    def encode(self, v: np.ndarray, seed: int = 0, rnd: int = 0, client: int = 0) -> tuple[Payload, np.ndarray]:
        v = np.asarray(v, dtype=np.float64)
        idx = self.topk.indices(v)
        val = v[idx].astype(self.dtype)
        out = np.zeros(self.d)
        out[idx] = val
        return {EF21_IDX: idx.astype(np.uint32), EF21_VAL: val}, out

    def validate(self, payload: Payload) -> None:
        _expect_keys(payload, {EF21_IDX, EF21_VAL})
        _expect(payload[EF21_IDX], EF21_IDX, np.dtype(np.uint32), (self.k,))
        _expect(payload[EF21_VAL], EF21_VAL, self.dtype, (self.k,))
        idx = payload[EF21_IDX].astype(np.int64)
        if idx.size and (idx[-1] >= self.d or np.any(np.diff(idx) <= 0)):
            raise PayloadError(f"{EF21_IDX}: positions must be strictly increasing and < {self.d}")

    def decode(self, payload: Payload, seed: int = 0, rnd: int = 0, client: int = 0) -> np.ndarray:
        out = np.zeros(self.d)
        out[payload[EF21_IDX].astype(np.int64)] = payload[EF21_VAL]
        return out


class CodecWire:
    """A registered, stateless, contractive codec applied tensor by tensor.

    Parameters
    ----------
    codec : fedsim.codecs.base.Codec
    infos : sequence of TensorInfo
        The model's tensors, in the order of the flat vector.
    alpha : float, optional
        Overrides the alpha the codec declares (you assert C is alpha-contractive).
    """

    def __init__(self, codec: Any, infos: Sequence[TensorInfo], alpha: float | None = None) -> None:
        self.codec, self.infos = codec, list(infos)
        stateful = [i.name for i in self.infos if codec.init(i)]
        if stateful:
            raise ValueError(
                f"codec {codec.name!r} keeps state between rounds (tensors {stateful[:3]}); EF21's g_i "
                "already is the error feedback: use a memoryless codec (e.g. topk with error_feedback: false)"
            )
        if alpha is not None and not 0.0 < float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in (0, 1]; got {alpha}")
        self.alpha = float(alpha) if alpha is not None else blockwise_alpha(codec_alpha(codec, i) for i in self.infos)
        self._cuts = np.cumsum([i.numel for i in self.infos])[:-1]

    def _tensors(self, v: np.ndarray) -> list[np.ndarray]:
        return [p.reshape(i.shape) for p, i in zip(np.split(v, self._cuts), self.infos)]

    def encode(self, v: np.ndarray, seed: int, rnd: int, client: int) -> tuple[Payload, np.ndarray]:
        parts, decoded = [], []
        for x, info, ctx in zip(self._tensors(np.asarray(v, dtype=np.float32)), self.infos,
                                contexts(len(self.infos), seed, rnd, client)):
            payload, _ = self.codec.encode(x, {}, ctx)
            parts.append(payload)
            decoded.append(self.codec.decode(payload, info, ctx).reshape(-1))
        return flatten(parts), np.concatenate(decoded).astype(np.float64)

    def validate(self, payload: Payload) -> None:
        validate_update(self.codec, payload, self.infos)

    def decode(self, payload: Payload, seed: int, rnd: int, client: int) -> np.ndarray:
        parts = decode_update(self.codec, payload, self.infos, seed, rnd, client)
        return np.concatenate([p.reshape(-1) for p in parts]).astype(np.float64)
