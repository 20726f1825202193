"""Apply a per-tensor codec to a whole model update.

A model update is a list of float32 tensors described by :class:`TensorInfo`. Its
payload is one flat ``dict`` whose keys are ``"<tensor index>.<field>"`` (e.g.
``"0.x"``, ``"3.idx"``), which is what travels in a Flower ``ArrayRecord``; the
per-tensor client state is stored with keys of the same form (:mod:`fedsim.codecs.cycle`).

A payload key must match :data:`PAYLOAD_KEY` exactly: the index in canonical ASCII
decimal (``"0"``, ``"12"``; never ``"01"``, ``"+1"``, ``"\u0661"`` or fullwidth digits,
which ``int()`` would accept as aliases of another key) and the field in ``[a-z_]``.
So every (tensor, field) has exactly one spelling, and a dict holds it at most once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from .base import Codec, CodecContext, Payload, PayloadError, State, TensorInfo, validate_payload


def tensor_infos(named: Mapping[str, tuple[int, ...]] | Sequence[tuple[str, tuple[int, ...]]]) -> list[TensorInfo]:
    """TensorInfo for each (name, shape), in order."""
    items = named.items() if isinstance(named, Mapping) else named
    return [TensorInfo(str(name), tuple(int(d) for d in shape)) for name, shape in items]


def contexts(n: int, seed: int, round_: int, client: int) -> list[CodecContext]:
    """One codec context per tensor: (seed, round, client, tensor index)."""
    return [CodecContext(seed, round_, client, i) for i in range(n)]


def flatten(per_tensor: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """[{field: array}] -> {"i.field": array}."""
    return {f"{i}.{k}": v for i, d in enumerate(per_tensor) for k, v in d.items()}


def model_vector(tensors: Sequence[np.ndarray], dtype: npt.DTypeLike = np.float32) -> np.ndarray:
    """A model's tensors -> one flat vector, in order (row-major ravel of each).

    The inverse of :func:`split_vector`; the one place a strategy or client turns a list
    of tensors into the parameter vector x that the algorithms' equations are written in.
    """
    if not tensors:
        return np.zeros(0, dtype=dtype)
    return np.concatenate([np.asarray(t, dtype=dtype).ravel() for t in tensors])


def split_vector(vec: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """A flat vector -> one array per shape (views of ``vec``), in order.

    Raises ValueError when ``vec`` does not hold exactly ``sum(prod(shape))`` numbers.
    """
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    vec = np.asarray(vec)
    if vec.ndim != 1 or vec.size != sum(sizes):
        raise ValueError(f"a vector of {vec.size} numbers cannot hold tensors of {sum(sizes)} numbers")
    parts = np.split(vec, np.cumsum(sizes)[:-1]) if sizes else []
    return [p.reshape(s) for p, s in zip(parts, shapes)]


PAYLOAD_KEY = re.compile(r"(0|[1-9][0-9]*)\.([a-z_]+)")
"""A wire payload key (``fullmatch``): canonical ASCII index, a lower-case field name."""
STATE_KEY = re.compile(r"(0|[1-9][0-9]*)\.(.+)", re.DOTALL)
"""A persisted client-state key: the same index, any field name (``"inner.e"``)."""


def unflatten(flat: Mapping[str, np.ndarray], n: int,
              pattern: re.Pattern[str] = STATE_KEY) -> list[dict[str, np.ndarray]]:
    """{"i.field": array} -> [{field: array}] for i < n; any other key is a PayloadError.

    Keys must ``fullmatch`` ``pattern`` (:data:`STATE_KEY` by default, :data:`PAYLOAD_KEY`
    for what a client sends: :func:`split_payload`).
    """
    out: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
    for key, value in flat.items():
        m = pattern.fullmatch(key) if isinstance(key, str) else None
        if m is None or len(m.group(1)) > 9 or int(m.group(1)) >= n:
            raise PayloadError(f"unexpected payload key {key!r} for a model of {n} tensors "
                               f"(expected '<index>.<field>', index 0..{n - 1} in plain decimal)")
        out[int(m.group(1))][m.group(2)] = value
    return out


def split_payload(flat: Mapping[str, np.ndarray], n: int) -> list[dict[str, np.ndarray]]:
    """A client's flat payload -> one dict per tensor, keys checked against :data:`PAYLOAD_KEY`."""
    return unflatten(flat, n, PAYLOAD_KEY)


def init_states(codec: Codec, infos: Sequence[TensorInfo]) -> list[State]:
    """Fresh codec state for every tensor."""
    return [codec.init(info) for info in infos]


def encode_update(
    codec: Codec,
    update: Sequence[np.ndarray],
    infos: Sequence[TensorInfo],
    states: Sequence[State],
    seed: int,
    round_: int,
    client: int,
) -> tuple[Payload, list[State]]:
    """Encode every tensor of ``update``; return the flat payload and the new states."""
    payloads, new_states = [], []
    for x, info, state, ctx in zip(update, infos, states, contexts(len(infos), seed, round_, client)):
        p, s = codec.encode(np.asarray(x, dtype=np.float32).reshape(info.shape), state, ctx)
        payloads.append(p)
        new_states.append(s)
    return flatten(payloads), new_states


def validate_update(codec: Codec, flat: Payload, infos: Sequence[TensorInfo]) -> list[Payload]:
    """Split and validate a flat payload; raise PayloadError naming the first fault."""
    parts = split_payload(flat, len(infos))
    for part, info in zip(parts, infos):
        validate_payload(codec, part, info)
    return parts


def decode_update(
    codec: Codec,
    flat: Payload,
    infos: Sequence[TensorInfo],
    seed: int,
    round_: int,
    client: int,
) -> list[np.ndarray]:
    """Validate, then decode every tensor of a flat payload."""
    parts = validate_update(codec, flat, infos)
    ctxs = contexts(len(infos), seed, round_, client)
    return [codec.decode(p, info, ctx) for p, info, ctx in zip(parts, infos, ctxs)]
