"""fedsim.packed: a reply's payload as one array. Round trip, hand-counted layout, and fuzz:
a malformed buffer is a PayloadError with a reason, never another exception."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.codecs.base import PayloadError
from fedsim.packed import DTYPES, MAGIC, pack, unpack
from fedsim.wire import PACKED, make_reply, read_payload, read_reply, to_record

arrays = st.builds(
    lambda dt, shape, seed: np.random.default_rng(seed).integers(0, 255, size=shape, dtype=np.uint8)
    .view(np.uint8).astype(np.dtype(dt)),
    st.sampled_from(sorted(DTYPES)), st.lists(st.integers(0, 5), max_size=3).map(tuple), st.integers(0, 2**32 - 1))
payloads = st.dictionaries(st.text(max_size=12), arrays, max_size=6)


@settings(max_examples=300, deadline=None)
@given(payloads)
def test_round_trip_keeps_keys_order_dtypes_shapes_and_bytes(payload):
    back = unpack(pack(payload))
    assert list(back) == list(payload)
    for key, arr in payload.items():
        assert back[key].dtype == arr.dtype and back[key].shape == arr.shape
        assert back[key].tobytes() == arr.tobytes()
        assert back[key].flags.writeable


def test_layout_hand_counted():
    buf = pack({"0.x": np.array([1.0, 2.0], np.float32), "1.idx": np.array([7], np.uint32)})
    header = b'[["0.x","<f4",[2]],["1.idx","<u4",[1]]]'
    assert buf.dtype == np.uint8
    assert buf.tobytes() == (MAGIC + len(header).to_bytes(4, "little") + header
                             + np.array([1.0, 2.0], "<f4").tobytes() + np.array([7], "<u4").tobytes())


def test_big_endian_is_sent_little_endian_and_other_dtypes_are_refused():
    back = unpack(pack({"a": np.array([1, 2], ">i4")}))
    assert back["a"].dtype.str == "<i4" and back["a"].tolist() == [1, 2]
    with pytest.raises(ValueError, match="cannot be packed"):
        pack({"a": np.array(["x"])})
    with pytest.raises(ValueError, match="cannot be packed"):
        pack({"a": np.array([1 + 2j])})


def _raw(header: object, data: bytes = b"", raw_header: bytes | None = None) -> np.ndarray:
    h = json.dumps(header).encode() if raw_header is None else raw_header
    return np.frombuffer(MAGIC + len(h).to_bytes(4, "little") + h + data, np.uint8)


@pytest.mark.parametrize("buf, reason", [
    (np.zeros(3, np.float32), "1-d uint8"),
    (np.frombuffer(b"NOPE\0\0\0\0", np.uint8), "does not start with"),
    (np.frombuffer(MAGIC + (10**6).to_bytes(4, "little"), np.uint8), "header of 1000000 bytes"),
    (_raw(None, raw_header=b"\xff\xfe"), "not UTF-8 JSON"),
    (_raw(None, raw_header=b"[" * 100000), "not UTF-8 JSON"),  # nesting too deep for json
    (_raw({"a": 1}), "not a list"),
    (_raw([["a", "<f4"]]), "not \\[key, dtype, shape\\]"),
    (_raw([[1, "<f4", [1]]]), "not a string"),
    (_raw([["a", "|O", [1]]]), "dtype '\\|O'"),
    (_raw([["a", "<f4", [-1]]]), "shape \\[-1\\]"),
    (_raw([["a", "<f4", [True]]]), "shape \\[true\\]|shape \\[True\\]"),
    (_raw([["a", "<f4", [1.5]]]), "shape \\[1.5\\]"),
    (_raw([["a", "<f4", [1 << 41]]]), "shape"),
    (_raw([["a", "<f4", [2]]], b"\0" * 4), "needs 8 bytes, 4 are left"),
    (_raw([["a", "<f4", [1]]], b"\0" * 5), "1 bytes after the last array"),
    (_raw([["a", "|u1", [1]], ["a", "|u1", [1]]], b"\0\0"), "appears twice"),
])
def test_malformed_buffers_are_refused_with_a_reason(buf, reason):
    with pytest.raises(PayloadError, match=reason):
        unpack(buf)


@settings(max_examples=500, deadline=None)
@given(payloads, st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, 10**6))
def test_fuzzed_buffers_decode_or_are_refused(payload, flips, cut):
    raw = bytearray(pack(payload).tobytes())
    for pos, value in flips:
        raw[pos % len(raw)] = value
    raw = raw[: max(0, len(raw) - cut % 4)] if cut % 3 == 0 else raw
    try:
        out = unpack(np.frombuffer(bytes(raw), np.uint8))
    except PayloadError:
        return
    assert all(isinstance(k, str) and a.dtype.str in DTYPES for k, a in out.items())


def test_replies_are_packed_and_both_layouts_read_back():
    from flwr.app import Message, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    payload = {"0.sym": np.arange(5, dtype=np.uint8), "0.scale": np.array([0.5], np.float32)}
    metrics = {"num-examples": 3.0, "train-loss": 0.1}
    reply = make_reply(Message(RecordDict(), dst_node_id=1, message_type="train"), payload, metrics)
    assert list(reply.content.array_records["payload"]) == [PACKED]
    got, _ = read_reply(reply, 10_000)
    assert {k: v.tolist() for k, v in got.items()} == {k: v.tolist() for k, v in payload.items()}
    # one array per key (clients before packing) still reads
    assert read_payload(to_record(payload), 10_000)["0.scale"].tolist() == [0.5]
    with pytest.raises(PayloadError, match="comes alone"):
        read_payload(to_record({PACKED: pack(payload), "0.x": np.zeros(1, np.float32)}), 10_000)
    with pytest.raises(PayloadError, match="exceeds the cap"):
        read_reply(reply, 50)
    assert isinstance(reply.content.metric_records["metrics"], MetricRecord)
