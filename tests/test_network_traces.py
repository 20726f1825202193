"""Trace files: the documented CSV/JSON format loads; bad files are refused with the reason."""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path

import pytest

from fedsim.network import NetworkConfig, NetworkModel, TraceError, TraceRecord, dump_traces, load_traces

ROOT = Path(__file__).resolve().parents[1]

GOOD_CSV = """client,ms_per_sample,uplink_mbps,downlink_mbps,rtt_ms,period_s,active
3,486.0,5.6,5.6,,86400,0:3600;7200:9000
1,120.5,20,40,30,,
"""
GOOD_JSON = {"format": "fedsim-trace", "version": 1, "clients": [
    {"client": 3, "ms_per_sample": 486.0, "uplink_mbps": 5.6, "downlink_mbps": 5.6,
     "period_s": 86400, "active": [[0, 3600], [7200, 9000]]},
    {"client": 1, "ms_per_sample": 120.5, "uplink_mbps": 20, "downlink_mbps": 40, "rtt_ms": 30}]}
EXPECTED = (
    TraceRecord(client=1, ms_per_sample=120.5, uplink_mbps=20, downlink_mbps=40, rtt_ms=30),
    TraceRecord(client=3, ms_per_sample=486.0, uplink_mbps=5.6, downlink_mbps=5.6,
                period_s=86400, active=((0, 3600), (7200, 9000))),
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_documented_csv_loads(tmp_path: Path) -> None:
    assert load_traces(write(tmp_path, "t.csv", GOOD_CSV)) == EXPECTED


def test_documented_json_loads(tmp_path: Path) -> None:
    assert load_traces(write(tmp_path, "t.json", json.dumps(GOOD_JSON))) == EXPECTED


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_dump_load_round_trip(tmp_path: Path, suffix: str) -> None:
    p = tmp_path / f"out{suffix}"
    dump_traces(EXPECTED, p)
    assert load_traces(p) == EXPECTED


def test_csv_with_only_some_columns(tmp_path: Path) -> None:
    recs = load_traces(write(tmp_path, "t.csv", "client,uplink_mbps\n0,3\n1,\n"))
    assert recs == (TraceRecord(client=0, uplink_mbps=3.0), TraceRecord(client=1))


BAD_CSV = [
    ("", "empty file"),
    ("client,bandwidth\n0,3\n", r"unknown column\(s\) \['bandwidth'\]"),
    ("uplink_mbps\n3\n", "'client' column is required"),
    ("client,uplink_mbps\n0,-3\n", r"t.csv line 2: uplink_mbps: .*greater than 0"),
    ("client,uplink_mbps\n0,fast\n", r"line 2: uplink_mbps: .*valid number"),
    ("client,uplink_mbps\n0,nan\n", r"line 2: uplink_mbps"),
    ("client,uplink_mbps\n0,3\n0,4\n", "client 0 appears more than once"),
    ("client,uplink_mbps\n0,3,4\n", "line 2: more cells than columns"),
    ("client,active\n0,5:1\n", r"line 2: active: .*start < end"),
    ("client,active\n0,0:5;3:9\n", "sorted and disjoint"),
    ("client,active\n0,0-5\n", r"'0-5' is not 'start:end'"),
    ("client,period_s,active\n0,10,0:20\n", r"within|lie in \[0, period_s=10.0\]"),
    ("client,period_s\n0,10\n", "period_s without active"),
    ("client,uplink_mbps\n-1,3\n", r"client: .*greater than or equal to 0"),
    ("client,uplink_mbps\n", "no client records"),
]


@pytest.mark.parametrize(("text", "reason"), BAD_CSV)
def test_bad_csv_rejected_with_reason(tmp_path: Path, text: str, reason: str) -> None:
    with pytest.raises(TraceError, match=reason):
        load_traces(write(tmp_path, "t.csv", text))


BAD_JSON = [
    ("{not json", "not valid JSON"),
    (json.dumps({"version": 1, "clients": [{"client": 0}]}), "format: Field required"),
    (json.dumps({"format": "fedscale", "version": 1, "clients": [{"client": 0}]}), "format"),
    (json.dumps({"format": "fedsim-trace", "version": 2, "clients": [{"client": 0}]}), "version"),
    (json.dumps({"format": "fedsim-trace", "version": 1, "clients": []}), "clients"),
    (json.dumps({"format": "fedsim-trace", "version": 1, "clients": [{"client": 0, "speed": 1}]}),
     r"clients.0.speed: Extra inputs are not permitted"),
    (json.dumps({"format": "fedsim-trace", "version": 1,
                 "clients": [{"client": 0, "active": [[0, 1, 2]]}]}), "clients.0.active"),
]


@pytest.mark.parametrize(("text", "reason"), BAD_JSON)
def test_bad_json_rejected_with_reason(tmp_path: Path, text: str, reason: str) -> None:
    with pytest.raises(TraceError, match=reason):
        load_traces(write(tmp_path, "t.json", text))


def test_missing_and_wrong_kind(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="does not exist"):
        load_traces(tmp_path / "nope.csv")
    with pytest.raises(TraceError, match=r"\.csv or \.json"):
        load_traces(write(tmp_path, "t.pkl", "x"))


def test_config_traces_path_feeds_the_model(tmp_path: Path) -> None:
    p = write(tmp_path, "t.csv", GOOD_CSV)
    cfg = NetworkConfig.model_validate({"traces": str(p), "mix": {"ideal": 1.0}})
    model = NetworkModel(cfg, seed=0, num_clients=2)
    assert model.device(0).uplink_bps == 20e6  # record of client 1 (first in order)
    assert model.device(1).intervals == ((0, 3600), (7200, 9000))


def _converter():  # the script lives outside the package
    spec = importlib.util.spec_from_file_location(
        "convert_fedscale_traces", ROOT / "scripts" / "convert_fedscale_traces.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CAPACITY = {2: {"computation": 162.0, "communication": 5648.0},
            1: {"computation": 40.0, "communication": 20000.0}}
BEHAVIOUR = {1: {"active": [0, 500, 900], "inactive": [100, 950, 1000], "finish_time": 1000,
                 "duration": 1000, "model": "x"}}


def test_converter_units_and_intervals() -> None:
    recs = _converter().convert(CAPACITY, BEHAVIOUR)
    assert [r.client for r in recs] == [1, 2]
    r1, r2 = recs
    assert r2.ms_per_sample == 486.0 and r2.uplink_mbps == r2.downlink_mbps == 5.648
    assert r2.active is None
    assert r1.ms_per_sample == 120.0 and r1.period_s == 1000.0
    assert r1.active == ((0.0, 100.0), (500.0, 1000.0))  # [500,950) and [900,1000) merged


def test_converter_end_to_end_and_refuses_code(tmp_path: Path) -> None:
    conv = _converter()
    cap, beh, out = tmp_path / "cap", tmp_path / "beh", tmp_path / "t.json"
    cap.write_bytes(pickle.dumps(CAPACITY))
    beh.write_bytes(pickle.dumps(BEHAVIOUR))
    assert conv.main(["--capacity", str(cap), "--behaviour", str(beh), "--out", str(out)]) == 0
    assert load_traces(out) == tuple(conv.convert(CAPACITY, BEHAVIOUR))
    evil = tmp_path / "evil"
    evil.write_bytes(pickle.dumps(Path("/etc/passwd")))  # any non-allowed class
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        conv.load_trusted_pickle(evil)
