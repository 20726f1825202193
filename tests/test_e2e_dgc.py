"""End to end: DGC through `fedsim run`, Flower's own simulation engine on Ray (backend flower).

MNIST-5k, 20 clients, 10 a round, the MLP (784-128-10): ``fc1.weight`` 100,352 entries,
``fc2.weight`` 1,280, biases 138. At density 0.001 a client sends at most
k = ceil(100.352) = 101 and ceil(1.28) = 2 entries (uint32 index + float32 value, 8
bytes each) and the biases dense: 103 * 8 + 138 * 4 = 1,376 bytes against 407,080
dense (296x): float32 values and uint32 indices here (the config's float16 and varint
gaps make the size data-dependent). A 2-round warm-up (densities 0.1, 0.01) lets 3 rounds
learn.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
DENSE = (128 * 784 + 128 + 10 * 128 + 10) * 4  # 407,080 bytes a client
SPARSE_MAX = (101 + 2) * (4 + 4) + (128 + 10) * 4  # 1,376 bytes a client after warm-up


def test_dgc_on_ray_completes_learns_and_sends_far_less_than_dense(tmp_path):
    args = [sys.executable, "-m", "fedsim.cli", "run", str(ROOT / "configs" / "dgc_mnist.yaml"),
            "--out", str(tmp_path), "--set", "name=e2e-dgc", "--set", "data.num_clients=20",
            "--set", "clients_per_round=10", "--set", "rounds=3", "--set", "model.name=mlp",
            "--set", "model.params={}", "--set", "train.lr=0.1", "--set", "codec.params.warmup_rounds=2",
            "--set", "codec.params.values=float32", "--set", "codec.params.index_coding=uint32",
            "--set", "simulation.backend=flower", "--set", "output.plots=false"]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (run_dir,) = list(tmp_path.glob("e2e-dgc-*"))
    m = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in m] == [0, 1, 2, 3]
    assert all(r["replied"] == 10 and r["rejected"] == 0 for r in m[1:])
    assert m[-1]["test_accuracy"] > m[0]["test_accuracy"] + 0.3, [r["test_accuracy"] for r in m]
    assert 0 < m[-1]["bytes_up"] <= 10 * SPARSE_MAX  # at most k entries a tensor: >= 296x below dense
    assert m[-1]["cum_bytes_up"] * 10 < 3 * 10 * DENSE  # warm-up included, > 10x below dense
