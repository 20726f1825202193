"""End to end: MoNNA through `fedsim run` on Ray learns under sign flipping; FedAvg does not.

The attack is client-side sign flipping (each of the 2 Byzantine clients sends its own update
times -4, ``sign_flip_own``), so it also checks that client attacks reach MoNNA's client task
through Ray. (The omniscient ``-mean`` sign flip of updates only slows FedAvg down when
f < n/2, by (n - 2f)/n; see docs/robustness.md.) The FedAvg half runs in process to keep the
test short.
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import run_inprocess

from fedsim.config import load_config
from fedsim.metrics import read_rows

pytestmark = pytest.mark.e2e
SMALL = ["data.name=digits", "data.num_clients=10", "clients_per_round=10", "rounds=3", "eval_every=1",
         "attack={name: sign_flip_own, params: {scale: 4.0}, count: 2}", "output.progress=false"]


def test_monna_on_ray_learns_under_sign_flipping_and_fedavg_does_not(tmp_path):
    args = [sys.executable, "-m", "fedsim.cli", "run", "configs/monna_mnist.yaml", "--out", str(tmp_path),
            "--set", "simulation.backend=flower", "--set", "name=e2e-monna",
            "--set", "strategy.params={f: 2, lr: 0.5, beta: 0.9, local_steps: 20, evaluate_every: 1}"]
    for o in SMALL:
        args += ["--set", o]
    res = subprocess.run(args, capture_output=True, text=True, timeout=400, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (run_dir,) = list(tmp_path.glob("e2e-monna*"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["replied"] for r in rows[1:]] == [10, 10, 10]
    assert rows[-1]["honest_accuracy_min"] > 0.6 and rows[-1]["honest_accuracy_mean"] > rows[0]["test_accuracy"] + 0.4

    fedavg = load_config("configs/monna_mnist_fedavg.yaml", SMALL)
    run_inprocess(fedavg, tmp_path / "fedavg")
    assert max(r["test_accuracy"] for r in read_rows(tmp_path / "fedavg")[1:]) < 0.3
