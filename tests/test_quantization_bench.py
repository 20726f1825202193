"""benchmarks/quantization.py's byte counts and probe maths: the sizes of real replies (payload,
NPY files, every Flower object pushed), the three payload layouts, and the aggregate error."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import push_objects

from fedsim.codecs.base import payload_nbytes
from fedsim.codecs.dithered import Dqsg
from fedsim.codecs.model import decode_update, tensor_infos
from fedsim.codecs.packing import packed_nbytes
from fedsim.config import load_config
from fedsim.wire import read_reply, record_nbytes, to_record

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "quantization.py"
NPY_HEADER = 128  # "\x93NUMPY" 1.0: 10 bytes + a dict padded so the total is a multiple of 64 (short 1-D shapes)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_quantization", BENCH)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = mod  # type: ignore[union-attr]  (its dataclass resolves annotations there)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _payload() -> dict[str, np.ndarray]:
    """A real DQSG M=1 payload of a (40, 30) weight and a (30,) bias: keys 0.sym, 0.scale, 1.sym, 1.scale."""
    from fedsim.codecs.model import encode_update, init_states

    infos = tensor_infos([("w", (40, 30)), ("b", (30,))])
    rng = np.random.default_rng(3)
    update = [rng.normal(0, 1, i.shape).astype(np.float32) for i in infos]
    codec = Dqsg(levels=1, bucket=512)
    return encode_update(codec, update, infos, init_states(codec, infos), 0, 1, 0)[0]


# ------------------------------------------------------------------ one reply's bytes


def test_reply_bytes_of_a_real_reply_hand_counted(bench):
    payload = _payload()
    # DQSG M=1 (base 3: 5 symbols a byte), float32 scale a bucket of 512
    assert payload_nbytes(payload) == packed_nbytes(1200, 3) + 4 * 3 + packed_nbytes(30, 3) + 4 * 1 == 240 + 12 + 6 + 4
    got = bench.reply_bytes(bench.real_reply(payload, bench.REPLY_METRICS))
    assert got.payload == 262
    assert got.npy == record_nbytes(to_record(payload)) == 262 + 4 * NPY_HEADER
    assert got.one < got.wire and got.wire > got.npy + 4 * 100  # each array costs more than its NPY header


def test_wire_bytes_are_what_flower_pushes(bench):
    # differential: the objects Flower's own push_objects sends for the message, byte for byte
    reply = bench.real_reply(_payload(), bench.REPLY_METRICS)
    pushed: list[int] = []
    push_objects(get_all_nested_objects(reply), lambda oid, content: pushed.append(len(content)), keep_objects=True)
    assert bench.flower_nbytes(reply) == sum(pushed)
    assert len(pushed) == 1 + 1 + 2 + 2 * 4  # message, RecordDict, 2 records, (Array + ArrayChunk) x 4


def test_the_reply_still_reads_back(bench):
    payload = _payload()
    got, metrics = read_reply(bench.real_reply(payload, bench.REPLY_METRICS), 10**6)
    assert metrics["num-examples"] == 40.0
    for k, v in payload.items():
        np.testing.assert_array_equal(got[k], v)


@pytest.mark.parametrize("layout", ["tensor", "field", "reply"])
def test_layouts_keep_every_byte(bench, layout):
    payload = _payload()
    arrays = bench.layout_arrays(payload, layout)
    assert len(arrays) == {"tensor": 4, "field": 2, "reply": 1}[layout]
    assert payload_nbytes(arrays) == payload_nbytes(payload)
    joined = b"".join(a.tobytes() for a in arrays.values())
    assert sorted(joined) == sorted(b"".join(a.tobytes() for a in payload.values()))
    if layout == "field":
        assert arrays["sym"].dtype == np.uint8 and arrays["scale"].dtype == np.float32
        np.testing.assert_array_equal(arrays["scale"], np.concatenate([payload["0.scale"], payload["1.scale"]]))


def test_fewer_arrays_fewer_bytes_and_one_matches_the_layout(bench):
    payload = _payload()
    wire = {lay: bench.layout_wire(payload, lay) for lay in bench.LAYOUTS}
    assert wire["tensor"] > wire["field"] > wire["packed"] > wire["reply"]
    assert wire["packed"] - wire["reply"] < 8 + 4 * 40  # magic, length and a JSON index of 4 keys
    # ReplyBytes.one (the same reply rebuilt as one array) is the "reply" layout's size
    assert bench.reply_bytes(bench.real_reply(payload, bench.REPLY_METRICS)).one == wire["reply"]
    # each array beyond the first costs the same here (short keys and shapes of equal length)
    assert wire["tensor"] - wire["field"] == pytest.approx((wire["field"] - wire["reply"]) * 2, abs=16)


# ------------------------------------------------------------------ the probe's maths


def test_bits_and_aggregate_error_hand_computed(bench):
    assert bench.bits([100, 300], 50) == 8.0 * 400 / (2 * 50)
    true = [np.array([3.0, 4.0], np.float32), np.array([0.0], np.float32)]
    dec = [np.array([3.0, 4.0], np.float32), np.array([1.0], np.float32)]
    assert bench.aggregate_error(dec, true) == pytest.approx(1.0 / 25.0)


def test_coarse_cell_ratio_hand_computed(bench):
    g = np.array([3.0, -1.0, 0.0, 1.5], np.float64)  # buckets of 2: max|g| 3 and 1.5
    y = g + np.array([0.5, -0.5, 0.5, -0.5])  # rms(g - y) = 0.5
    # cells rho*s = 3 * max/3: 3 and 1.5, mean 2.25
    assert bench.coarse_cell_ratio(g, y, 3, 3, 2) == pytest.approx(0.5 / 2.25)


def _round_cfg(*overrides: str):
    base = ["name=t", "data.name=digits", "data.num_clients=6", "clients_per_round=6", "model.name=mlp",
            "model.params={hidden: 8}"]
    return load_config(None, base + list(overrides))


def test_decoded_mean_of_lossless_codec_is_the_fedavg_mean(bench):
    infos = tensor_infos([("w", (64, 8)), ("b", (8,))])
    rng = np.random.default_rng(0)
    ups = {c: [rng.normal(0, 1, i.shape).astype(np.float32) for i in infos] for c in range(6)}
    n = {c: float(c + 1) for c in range(6)}
    mean, replies = bench.decoded_mean(_round_cfg(*bench.METHODS["dense (fp32)"]), ups, n, infos, 1)
    for t in range(2):
        want = sum(n[c] * ups[c][t].astype(np.float64) for c in ups) / sum(n.values())
        np.testing.assert_allclose(mean[t], want, rtol=1e-5, atol=1e-6)
    assert [r.payload for r in replies] == [4 * (512 + 8)] * 6


def test_decoded_mean_nested_decodes_references_like_the_strategy(bench):
    # NDQSG with every client's update equal: the side information is exact, every nested
    # client decodes to what DQSG M=M1 would give it with the same dither, no failure.
    cfg = _round_cfg(*bench._nested(2, 1.0, "1.0", "unbiased", 64))
    infos = tensor_infos([("w", (64, 8)), ("b", (8,))])
    rng = np.random.default_rng(1)
    same = [rng.normal(0, 1, i.shape).astype(np.float32) for i in infos]
    ups = {c: same for c in range(6)}
    mean, replies = bench.decoded_mean(cfg, ups, dict.fromkeys(range(6), 1.0), infos, 1)
    dq = Dqsg(levels=3, bucket=64)
    want = [np.mean([decode_update(dq, bench.encoded_payload(dq, same, infos, cfg.seed, 1, c), infos, cfg.seed, 1, c)[t]
                     for c in range(6)], axis=0) for t in range(2)]
    for t in range(2):
        np.testing.assert_allclose(mean[t], want[t], rtol=1e-5, atol=1e-6)
    sizes = sorted(r.payload for r in replies)
    ref = packed_nbytes(512, 7) + 4 * 8 + packed_nbytes(8, 7) + 4
    nest = packed_nbytes(512, 3) + 4 * 8 + packed_nbytes(8, 3) + 4
    assert sizes == [nest] * 4 + [ref] * 2


def test_select_rows(bench):
    assert bench.select(None, ["DQSG M=3"]) == ["DQSG M=3"]
    assert bench.select(["DQSG M=1"], []) == ["DQSG M=1"]  # a full name: that row only
    assert set(bench.select(["b4096"], [])) == {n for n in bench.METHODS if "b4096" in n}


def test_one_round_metered_run_matches_the_metrics(bench):
    # run() raises unless the metered replies are the metrics' replies and payload bytes
    base = ["name=t", "data.name=digits", "data.num_clients=4", "data.partition.kind=iid", "clients_per_round=4",
            "model.name=mlp", "model.params={hidden: 8}", "train.batch_size=16"]
    out = bench.run("NDQSG (1 ref) a=0.4 unb", base + bench.METHODS["NDQSG (1 ref) a=0.4 unb"], 1, 0, None)
    coords = 64 * 8 + 8 + 8 * 10 + 10
    nested = packed_nbytes(512, 3) + 4 + packed_nbytes(8, 3) + 4 + packed_nbytes(80, 3) + 4 + packed_nbytes(10, 3) + 4
    ref = packed_nbytes(512, 7) + 4 + packed_nbytes(8, 7) + 4 + packed_nbytes(80, 7) + 4 + packed_nbytes(10, 7) + 4
    assert out["bits"] == pytest.approx(8.0 * (3 * nested + ref) / (4 * coords))
    # a packed reply (fedsim.packed): ONE NPY header, 8 bytes of magic and length, a JSON index of
    # 8 keys (each entry like ["0.sym","|u1",[103]], under 40 bytes)
    overhead = (out["npy"] - out["bits"]) * coords / 8  # bytes a reply beyond its payload
    assert NPY_HEADER + 8 < overhead < NPY_HEADER + 8 + 8 * 40
    assert out["bits"] < out["npy"] < out["wire"] < out["tensor"] and math.isfinite(out["acc"])
