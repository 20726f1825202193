"""End to end: `fedsim run` as a user runs it, on the default backend (the pool of Ray workers)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
FEDSIM = [sys.executable, "-m", "fedsim.cli"]


def fedsim_run(tmp_path: Path, *overrides: str) -> Path:
    args = ["run", "configs/quickstart.yaml", "--out", str(tmp_path),
            "--set", "data.name=digits", "--set", "data.num_clients=20", "--set", "clients_per_round=10",
            "--set", "rounds=3", "--set", "model.name=mlp", "--set", "train.lr=0.1", "--set", "name=e2e",
            "--set", "codec={name: identity}", "--set", "network=null"]  # the quickstart's codec and network off
    for o in overrides:
        args += ["--set", o]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    res = subprocess.run(FEDSIM + args, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (run_dir,) = list(tmp_path.glob("e2e-*"))
    return run_dir


def rows(run_dir: Path, name: str) -> list[dict]:
    return [json.loads(l) for l in (run_dir / name).read_text().splitlines()]


def test_simulation_learns_writes_metrics_and_counts_bytes(tmp_path):
    run_dir = fedsim_run(tmp_path)
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "clients.jsonl", "summary.json",
                 "accuracy_vs_round.png", "accuracy_vs_uplink.png"):
        assert (run_dir / name).is_file(), name
    m, c = rows(run_dir, "metrics.jsonl"), rows(run_dir, "clients.jsonl")
    assert [r["round"] for r in m] == [0, 1, 2, 3]
    assert m[-1]["test_accuracy"] > m[0]["test_accuracy"] + 0.2
    dense = (64 * 128 + 128 + 128 * 10 + 10) * 4
    for r in m[1:]:
        mine = [x for x in c if x["round"] == r["round"]]
        assert r["replied"] == 10 and r["rejected"] == 0
        assert r["bytes_up"] == sum(x["bytes_up"] for x in mine) == 10 * dense


def test_a_nan_client_is_rejected_and_every_round_completes(tmp_path):
    run_dir = fedsim_run(tmp_path, "clients_per_round=20", "attack={name: nan, clients: [4]}", "rounds=2")
    m = rows(run_dir, "metrics.jsonl")[1:]
    assert [(r["replied"], r["rejected"]) for r in m] == [(19, 1), (19, 1)]
    bad = [x for x in rows(run_dir, "clients.jsonl") if x["status"] == "rejected"]
    assert [x["client"] for x in bad] == [4, 4] and "non-finite" in bad[0]["reason"]
    assert json.loads((run_dir / "summary.json").read_text())["rejected"] == 2


def test_thirty_percent_dropout_on_4g_phones_completes_every_round(tmp_path):
    net = ("network={mix: {flaky-4g: 1.0}, profiles: {flaky-4g: {base: 4g-phone, "
           "dropout_before: 0.15, dropout_mid: 0.15}}}")
    run_dir = fedsim_run(tmp_path, net, "rounds=4")
    m = rows(run_dir, "metrics.jsonl")[1:]
    assert [r["round"] for r in m] == [1, 2, 3, 4]
    assert sum(r["dropped_before"] + r["dropped_mid"] for r in m) >= 3  # ~12 of 40 expected
    assert all(r["replied"] == 10 - r["dropped_before"] - r["dropped_mid"] for r in m)
    times = [r["sim_time"] for r in m]
    assert all(b > a for a, b in zip(times, times[1:])) and m[0]["sim_round_s"] > 0.05
    assert (run_dir / "accuracy_vs_simtime.png").is_file()
