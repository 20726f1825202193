import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict

from fedsim.codecs import PayloadError
from fedsim.engine.inprocess import InProcessGrid  # sets Flower's task identity for Message()
from fedsim.wire import from_record, read_reply, record_nbytes, to_record

InProcessGrid(lambda m, c: m, 0)


def reply(content=None, error=None):
    ins = Message(RecordDict(), dst_node_id=5, message_type="train")
    return Message(error, reply_to=ins) if error else Message(content, reply_to=ins)


def test_record_round_trip_keeps_keys_dtypes():
    arrays = {"0.x": np.arange(4, dtype=np.float32), "1.idx": np.array([3, 1], np.uint32)}
    back = from_record(to_record(arrays), max_bytes=10_000)
    assert back.keys() == arrays.keys()
    assert all(back[k].dtype == arrays[k].dtype and np.array_equal(back[k], arrays[k]) for k in arrays)


def test_oversized_record_is_refused_before_decoding():
    rec = to_record({"0.x": np.zeros(1000, np.float32)})
    with pytest.raises(PayloadError, match="exceeds the cap"):
        from_record(rec, max_bytes=record_nbytes(rec) - 1)


def test_garbage_bytes_are_rejected_not_raised():
    rec = ArrayRecord()
    rec["0.x"] = Array(dtype="float32", shape=(4,), stype="numpy.ndarray", data=b"\x93NUMPY garbage")
    with pytest.raises(PayloadError, match="undecodable"):
        from_record(rec, max_bytes=10_000)


def test_read_reply_requires_records_and_metrics():
    good = RecordDict({"payload": to_record({"0.x": np.ones(2, np.float32)}),
                       "metrics": MetricRecord({"num-examples": 3, "train-loss": 0.5})})
    payload, metrics = read_reply(reply(good), 10_000)
    assert metrics["num-examples"] == 3.0 and np.array_equal(payload["0.x"], [1, 1])
    with pytest.raises(PayloadError, match="lacks the 'payload'"):
        read_reply(reply(RecordDict({"metrics": MetricRecord({"num-examples": 3, "train-loss": 0.5})})), 10_000)
    with pytest.raises(PayloadError, match="num-examples"):
        read_reply(reply(RecordDict({"payload": to_record({}), "metrics": MetricRecord({"train-loss": 0.5})})), 10_000)
    with pytest.raises(PayloadError, match="must be positive"):
        read_reply(reply(RecordDict({"payload": to_record({}),
                                     "metrics": MetricRecord({"num-examples": 0, "train-loss": 0.5})})), 10_000)
    with pytest.raises(PayloadError, match="client error: boom"):
        read_reply(reply(error=Error(code=0, reason="boom")), 10_000)
