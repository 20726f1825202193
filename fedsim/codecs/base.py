"""The codec seam: explicit state, pure functions, payloads of numpy arrays only.

A codec compresses one tensor of a client's update. The split is GRACE's (Xu et al.,
"GRACE: A Compressed Communication Framework for Distributed Machine Learning", ICDCS
2021): the payload is what is communicated, the state stays on the client. The interface
is Optax's ``init``/``update`` pair (Babuschkin et al., "The DeepMind JAX Ecosystem", 2020):

``init(info) -> S``
    the per-tensor state the client keeps between rounds (error-feedback memory,
    momentum, ...): a ``NamedTuple`` of numpy arrays (:mod:`fedsim.codecs.states`), so it
    can be persisted anywhere; :class:`~fedsim.codecs.states.EmptyState` for a memoryless
    codec.
``encode(x, state, ctx) -> (Payload, S)``
    pure: the payload is a ``dict`` of numpy arrays (the only thing that crosses the
    wire) and the new state; randomness comes from ``ctx.rng(...)`` only.
``decode(payload, info, ctx) -> ndarray``
    pure; the server rebuilds any dither from the same ``ctx`` (seed, round, client,
    tensor), so no dither ever crosses the wire.
``fields(info) -> {key: Field}``
    what a valid payload holds: keys, dtypes, shapes, sizes, ranges. The server checks
    every reply against it (:func:`validate_payload`) before decoding anything.

The codecs here and in sibling modules import numpy only: an edge device without
torch encodes with the very same code the simulator uses.
"""

from __future__ import annotations

import hashlib
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar, cast

import numpy as np

from .states import EmptyState, State

Payload = dict[str, np.ndarray]
S = TypeVar("S")
__all__ = ["Codec", "CodecContext", "EmptyState", "Field", "Payload", "PayloadError", "State", "TensorInfo",
           "payload_nbytes", "validate_payload"]


class PayloadError(ValueError):
    """A payload that must be rejected; the message is the reason."""


@dataclass(frozen=True)
class TensorInfo:
    """What both sides know about one tensor of the model."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


def _stream_id(stream: str) -> int:
    return int.from_bytes(hashlib.blake2b(stream.encode(), digest_size=4).digest(), "little")


@dataclass(frozen=True)
class CodecContext:
    """The coordinates of one encode/decode: both sides can rebuild it.

    ``rng(stream)`` is a generator seeded from (run seed, round, client, tensor,
    stream), and ``key(stream)`` the key of a counter-based stream from the same
    coordinates: the client's dither and the server's regenerated dither are
    identical, and two streams (e.g. "dither" and "sample") never share numbers.
    """

    seed: int
    round: int
    client: int
    tensor: int

    def _seed_sequence(self, stream: str) -> np.random.SeedSequence:
        key = [self.seed, self.round, self.client, self.tensor, _stream_id(stream)]
        return np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key])

    def rng(self, stream: str) -> np.random.Generator:
        return np.random.default_rng(self._seed_sequence(stream))

    def key(self, stream: str) -> tuple[int, int]:
        """Two 32-bit words from (run seed, round, client, tensor, stream).

        The key of a counter-based generator (:mod:`fedsim.codecs.dither`): entry ``i``
        of a stream is a function of ``(key, i)`` alone, so it can be computed in any
        order, by any number of threads, in compiled code or numpy, with equal results.
        """
        k0, k1 = self._seed_sequence(stream).generate_state(2, np.uint32)
        return int(k0), int(k1)


@dataclass(frozen=True)
class Field:
    """The contract of one payload entry.

    Parameters
    ----------
    dtype : str
        Exact numpy dtype name ("float32", "uint8", ...).
    shape : tuple of int, optional
        Exact shape; ``None`` allows any 1-D array of at most ``max_size`` entries.
    max_size : int, optional
        Upper bound on the number of entries when ``shape`` is None.
    low, high : int, optional
        Inclusive bounds on integer entries (indices, symbols).
    """

    dtype: str
    shape: tuple[int, ...] | None = None
    max_size: int | None = None
    low: int | None = None
    high: int | None = None


class Codec(ABC, Generic[S]):
    """Base class of a per-tensor codec with state type ``S``; see the module docstring."""

    name: ClassVar[str] = ""

    def init(self, info: TensorInfo) -> S:
        """Fresh client state for one tensor; :class:`EmptyState` (falsy) unless overridden.

        A codec that keeps state overrides this with its own ``NamedTuple``."""
        return cast(S, EmptyState())  # S is EmptyState for every codec that does not override init

    @abstractmethod
    def encode(self, x: np.ndarray, state: S, ctx: CodecContext) -> tuple[Payload, S]:
        """Encode ``x`` (float32, the tensor's shape); return the payload and new state."""

    @abstractmethod
    def decode(self, payload: Payload, info: TensorInfo, ctx: CodecContext) -> np.ndarray:
        """Rebuild the float32 tensor of ``info.shape`` from a validated payload."""

    @abstractmethod
    def fields(self, info: TensorInfo) -> dict[str, Field]:
        """The keys, dtypes and shapes of a valid payload for ``info``."""

    def check(self, payload: Payload, info: TensorInfo) -> None:  # noqa: B027 - optional hook, no-op by default
        """Cross-field checks beyond :meth:`fields` (raise :class:`PayloadError`)."""

    def params(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this codec: ``CODECS.build(c.name, c.params())``.

        Read generically from ``__init__``'s signature, each from the attribute of the same
        name, so a new constructor parameter reaches whoever rebuilds the codec (a strategy
        that sends clients a codec's spec) without being listed anywhere else. Raises
        TypeError when the codec does not keep a parameter as an attribute of its name.
        """
        out = {}
        for p in list(inspect.signature(type(self).__init__).parameters.values())[1:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if not hasattr(self, p.name):
                raise TypeError(f"{type(self).__name__} keeps no attribute {p.name!r} for its constructor "
                                "parameter of that name, so its params() cannot rebuild it")
            out[p.name] = getattr(self, p.name)
        return out


def payload_nbytes(payload: Payload) -> int:
    """Bytes of a payload: the data of every array, scales and indices included."""
    return int(sum(a.nbytes for a in payload.values()))


def validate_payload(codec: Codec, payload: Payload, info: TensorInfo) -> None:
    """Check ``payload`` against ``codec.fields(info)``; raise PayloadError with a reason."""
    fields = codec.fields(info)
    missing = sorted(set(fields) - set(payload))
    extra = sorted(set(payload) - set(fields))
    if missing or extra:
        raise PayloadError(
            f"{info.name}: expected keys {sorted(fields)}, missing {missing}, unexpected {extra}"
        )
    for key, spec in fields.items():
        arr = payload[key]
        where = f"{info.name}.{key}"
        if not isinstance(arr, np.ndarray):
            raise PayloadError(f"{where}: not a numpy array")
        if arr.dtype != np.dtype(spec.dtype):
            raise PayloadError(f"{where}: dtype {arr.dtype}, expected {spec.dtype}")
        if spec.shape is not None:
            if tuple(arr.shape) != tuple(spec.shape):
                raise PayloadError(f"{where}: shape {tuple(arr.shape)}, expected {spec.shape}")
        else:
            if arr.ndim != 1:
                raise PayloadError(f"{where}: expected a 1-D array, got shape {arr.shape}")
            if spec.max_size is not None and arr.size > spec.max_size:
                raise PayloadError(f"{where}: {arr.size} entries, at most {spec.max_size} allowed")
        if arr.dtype.kind == "f":
            if not np.isfinite(arr).all():
                raise PayloadError(f"{where}: non-finite values")
        elif arr.dtype.kind in "iu" and arr.size:
            if spec.low is not None and int(arr.min()) < spec.low:
                raise PayloadError(f"{where}: value {int(arr.min())} below {spec.low}")
            if spec.high is not None and int(arr.max()) > spec.high:
                raise PayloadError(f"{where}: value {int(arr.max())} above {spec.high}")
    codec.check(payload, info)
