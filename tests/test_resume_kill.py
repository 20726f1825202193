"""``fedsim run`` killed with SIGKILL mid-run, then ``fedsim run --resume``: the final model
bytes and every metric row (but wall time) equal an uninterrupted run's. A stateful codec
(top-k with error feedback: every client keeps memory, on the pool's Ray workers) and a
stateful strategy (FedAvgM: server momentum), so both kinds of state must come back from the
checkpoint."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedsim.metrics import read_rows
from fedsim.runstatus import run_status

pytestmark = pytest.mark.e2e  # three fedsim processes (about a minute)

ROUNDS, KILL_AT = 5, 2
ARGS = ["--set", "simulation.backend=pool", "--set", f"rounds={ROUNDS}", "--set", "eval_every=2",
        "--set", "strategy={name: fedavgm, params: {server_momentum: 0.9}}",
        "--set", "codec={name: topk, params: {density: 0.1}}",
        "--set", "data.name=digits", "--set", "data.num_clients=8", "--set", "data.partition.kind=iid",
        "--set", "clients_per_round=3", "--set", "model.name=mlp", "--set", "model.params={hidden: 16}",
        "--set", "output.plots=false", "--set", "output.progress=false", "--set", "name=kill"]


def fedsim(log: Path, *args: str):
    """``fedsim run ARGS`` in a subprocess, its output in ``log`` (a pipe could fill and block it)."""
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "fedsim.cli", "run", *args], stdout=f,
                                stderr=subprocess.STDOUT, text=True)


def only_run(parent: Path) -> Path:
    runs = [p for p in parent.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def rows_wo_wall(run: Path):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in read_rows(run)]


def model(run: Path):
    with np.load(run / "model-final.npz", allow_pickle=False) as f:
        return [(k, f[k].tobytes()) for k in f.files]


def test_sigkilled_run_resumes_to_the_uninterrupted_result(tmp_path):
    full = fedsim(tmp_path / "full.log", "configs/quickstart.yaml", *ARGS, "--out", str(tmp_path / "full"))
    cut = fedsim(tmp_path / "cut.log", "configs/quickstart.yaml", *ARGS, "--out", str(tmp_path / "cut"))
    # kill when metrics.jsonl has KILL_AT + 1 rows (round 0 .. KILL_AT): mid-round KILL_AT + 1
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        runs = list((tmp_path / "cut").glob("kill-*/metrics.jsonl"))
        if runs and len(runs[0].read_text().splitlines()) >= KILL_AT + 1:
            break
        assert cut.poll() is None, (tmp_path / "cut.log").read_text()
        time.sleep(0.02)
    cut.send_signal(signal.SIGKILL)
    cut.wait()
    run = only_run(tmp_path / "cut")
    status = run_status(run)
    # killed after round KILL_AT's row: its checkpoint and status may or may not be written
    assert status["state"] == "running" and KILL_AT - 1 <= status["round"] <= KILL_AT
    assert full.wait(timeout=300) == 0, (tmp_path / "full.log").read_text()
    resumed = fedsim(tmp_path / "resumed.log", "--resume", str(run))
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resumed.log").read_text()
    ref = only_run(tmp_path / "full")
    assert rows_wo_wall(run) == rows_wo_wall(ref) and len(rows_wo_wall(run)) == ROUNDS + 1
    assert model(run) == model(ref)
    assert run_status(run)["state"] == "finished"
    again = fedsim(tmp_path / "again.log", "--resume", str(run))
    text = (again.wait(timeout=120), (tmp_path / "again.log").read_text())[1]
    assert again.returncode == 2 and "finished" in text and "Traceback" not in text
