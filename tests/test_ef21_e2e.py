"""End to end: EF21-W through `fedsim run`, Flower's simulation engine and Ray."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_ef21w_through_ray_decreases_the_gradient_norm(tmp_path):
    args = [sys.executable, "-m", "fedsim.cli", "run", "configs/ef21w_mnist5k.yaml", "--out", str(tmp_path),
            "--set", "name=e2e-ef21w", "--set", "rounds=3", "--set", "simulation.backend=flower",
            "--set", "data.name=digits-binary", "--set", "data.num_clients=4", "--set", "clients_per_round=4",
            "--set", "strategy.params={compressor: topk, k: 4, multiplier: 8}", "--set", "output.progress=false"]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (run_dir,) = list(tmp_path.glob("e2e-ef21w-*"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]
    norms = [r["grad_norm_sq"] for r in rows]
    assert len(norms) == 3 and norms[2] < norms[1] < norms[0], norms
    assert all(r["replied"] == 4 and r["rejected"] == 0 for r in rows)
    dense, sparse = 4 * 65 * 4, 4 * 4 * (4 + 4)  # 4 clients: 65 float32 values; then 4 (uint32, float32) pairs
    assert [r["bytes_up"] for r in rows] == [dense, sparse, sparse]
    assert rows[0]["ef21_L_am"] <= rows[0]["ef21_L_qm"] and rows[0]["ef21_gamma"] > 0
