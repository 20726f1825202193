"""What crosses the wire, and the checks on everything that comes back.

Instruction (server -> client), a fresh ``RecordDict`` per client:

- ``"arrays"``: ``ArrayRecord``, the model (or model state) the client starts from;
- ``"config"``: ``ConfigRecord`` with ``fedsim.spec`` (JSON of :class:`ClientSpec`),
  ``fedsim.round``, optionally ``fedsim.attack`` (JSON, for a Byzantine client) and
  ``fedsim.task`` (the client task a strategy asks for), plus whatever the inner
  strategy put there.

Reply (client -> server):

- ``"payload"``: ``ArrayRecord`` of the codec payload, keys ``"<tensor>.<field>"``, packed
  into one array under ``"packed"`` (:mod:`fedsim.packed`; one array per key is read too);
- ``"metrics"``: ``MetricRecord`` with ``num-examples`` (> 0), ``train-loss`` (finite) and
  optionally the other :data:`REPLY_METRICS`; the server drops any other key (and checks
  ``num-examples`` against the size the client reported at discovery).

Flower's ``Array`` decodes with ``np.load(allow_pickle=False)``; on top of that, the
serialized size of every reply is checked before anything is deserialised.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.app.message import make_message

from fedsim.codecs.base import PayloadError, TensorInfo
from fedsim.codecs.model import tensor_infos

# the keys live in fedsim.keys (standard library only, imported by the clients too)
from fedsim.keys import (  # noqa: F401  (re-exported: fedsim.wire is where replies are read)
    ARRAYS,
    ATTACK_KEY,
    CODEC_KEY,
    CONFIG,
    METRICS,
    NUM_EXAMPLES,
    OPTIONAL_METRICS,
    PACKED,
    PAYLOAD,
    PROXIMAL_MU_KEY,
    REPLY_METRICS,
    REQUIRED_METRICS,
    ROUND_KEY,
    SPEC_KEY,
    TASK_KEY,
    TRAIN_LOSS,
)
from fedsim.packed import pack, unpack


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Numpy arrays -> ArrayRecord, keeping the keys."""
    rec = ArrayRecord()
    for key, value in arrays.items():
        rec[key] = Array(np.ascontiguousarray(value))
    return rec


def record_infos(rec: ArrayRecord) -> list[TensorInfo]:
    """The TensorInfo (name, shape) of every array of a record, in order, without decoding it."""
    return tensor_infos([(key, tuple(arr.shape)) for key, arr in rec.items()])


def record_nbytes(rec: ArrayRecord) -> int:
    """Serialized size of a record's arrays (npy headers included)."""
    return int(sum(len(a.data) for a in rec.values()))


def from_record(rec: ArrayRecord, max_bytes: int) -> dict[str, np.ndarray]:
    """ArrayRecord -> numpy arrays, refusing records over ``max_bytes`` before decoding."""
    size = record_nbytes(rec)
    if size > max_bytes:
        raise PayloadError(f"payload of {size} bytes exceeds the cap of {max_bytes}")
    out = {}
    for key, arr in rec.items():
        try:
            out[key] = arr.numpy()
        except Exception as err:  # malformed npy bytes: reject, never crash the round
            raise PayloadError(f"{key}: undecodable array ({type(err).__name__})") from None
    return out


def read_reply(msg: Message, max_bytes: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Extract (payload arrays, metrics) from a reply, or raise PayloadError with a reason."""
    if msg.has_error():
        raise PayloadError(f"client error: {msg.error.reason}")
    content: RecordDict = msg.content
    if PAYLOAD not in content.array_records:
        raise PayloadError(f"reply lacks the {PAYLOAD!r} ArrayRecord")
    if METRICS not in content.metric_records:
        raise PayloadError(f"reply lacks the {METRICS!r} MetricRecord")
    metrics: dict[str, float] = {}
    for key, value in content.metric_records[METRICS].items():
        if isinstance(value, (int, float)):
            metrics[key] = float(value)
    for key in REQUIRED_METRICS:
        if key not in metrics or not math.isfinite(metrics[key]):
            raise PayloadError(f"metric {key!r} missing or not finite")
    if metrics[NUM_EXAMPLES] <= 0:
        raise PayloadError(f"metric {NUM_EXAMPLES!r} must be positive")
    return read_payload(content.array_records[PAYLOAD], max_bytes), metrics


def read_payload(rec: ArrayRecord, max_bytes: int) -> dict[str, np.ndarray]:
    """A reply's payload record -> ``{key: array}``: one packed array (:mod:`fedsim.packed`,
    what fedsim's clients send) or one array per key (clients before packing, or written
    against docs/wire-format.md without it). PayloadError with a reason otherwise."""
    arrays = from_record(rec, max_bytes)
    if PACKED not in arrays:
        return arrays
    if len(arrays) != 1:
        raise PayloadError(f"a packed payload comes alone; the reply also holds {sorted(set(arrays) - {PACKED})[:5]}")
    return unpack(arrays[PACKED])


def make_reply(msg: Message, payload: Mapping[str, np.ndarray], metrics: Mapping[str, float]) -> Message:
    """The reply to ``msg``: the payload packed into one array (:mod:`fedsim.packed`), and the metrics."""
    content = RecordDict({PAYLOAD: to_record({PACKED: pack(payload)}), METRICS: MetricRecord(dict(metrics))})
    return Message(content, reply_to=msg)


def with_content(msg: Message, content: RecordDict) -> Message:
    """A new message with ``msg``'s metadata (sender, ids) and ``content``: what the server
    hands an inner strategy in place of a reply (Flower's typed ``make_message``)."""
    return make_message(msg.metadata, content)
