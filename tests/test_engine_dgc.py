"""DGC through the engine: the real ClientApp on the in-process grid (no Ray).

The digits MLP of ``conftest.small_config`` (hidden 32): ``fc1.weight`` (32, 64),
``fc1.bias`` (32,), ``fc2.weight`` (10, 32), ``fc2.bias`` (10,). DGC at density 0.05
with a 2-round warm-up and ``sample_ratio=1`` (the threshold sample is the whole
tensor, so exactly k entries are sent): the densities are c, c**2, then 0.05, with
c = 0.05 ** (1/3) (fedsim.codecs.dgc.warmup_density). Density 0.05, not the benchmark's
0.001, so that 5 rounds of a 2.4k-parameter model learn (at 0.001 each client would send
4 weights a round); the 0.001 runs are benchmarks/dgc.py and the Ray test.
"""

import json
import math

import numpy as np
from conftest import run_inprocess

from fedsim.clients.app import app
from fedsim.engine.inprocess import InProcessGrid
from fedsim.metrics import read_rows
from fedsim.state import ContextStore

SHAPES = [(32, 64), (32,), (10, 32), (10,)]
RHO = 0.05
DGC = "codec.params={density: 0.05, warmup_rounds: 2, sample_ratio: 1.0, momentum: 0.5}"


def dgc_config(cfg_factory, *extra):
    return cfg_factory("codec.name=dgc", DGC, "data.num_clients=10", "clients_per_round=5", "rounds=5",
                       "train.lr=0.1", "train.local_epochs=2", *extra)


def hand_bytes_per_client(density: float) -> int:
    """uint32 index + float32 value per sent entry of a matrix; biases dense in float32."""
    total = 0
    for shape in SHAPES:
        numel = math.prod(shape)
        if len(shape) <= 1:
            total += 4 * numel  # dense small tensor: float32 "x"
        else:
            k = math.ceil(numel * density)  # k = ceil(numel * rho)
            total += k * (4 + 4)  # "idx" uint32 + "val" float32
    return total


def test_hand_bytes_match_the_formula():
    c = RHO ** (1 / 3)  # 0.3684
    # round 1: k = ceil(2048 c) = ceil(754.5) = 755 and ceil(320 c) = ceil(117.9) = 118; biases 42 floats
    assert hand_bytes_per_client(c) == (755 + 118) * 8 + 42 * 4 == 7152
    # round 2: c**2 = 0.1357: k = ceil(277.9) = 278 and ceil(43.4) = 44
    assert hand_bytes_per_client(c**2) == (278 + 44) * 8 + 42 * 4 == 2744
    # round 3 on: k = ceil(102.4) = 103 and ceil(16.0) = 16
    assert hand_bytes_per_client(RHO) == (103 + 16) * 8 + 42 * 4 == 1120


def test_dgc_run_learns_and_bytes_up_are_the_sparse_payload_sizes(tmp_path, cfg_factory):
    cfg = dgc_config(cfg_factory)
    summary = run_inprocess(cfg, tmp_path)
    rows = read_rows(tmp_path)
    clients = [json.loads(l) for l in (tmp_path / "clients.jsonl").read_text().splitlines()]
    c = RHO ** (1 / 3)
    densities = [c, c**2, RHO, RHO, RHO]
    dense = sum(math.prod(s) for s in SHAPES) * 4
    for r, rho in zip(rows[1:], densities):
        per_client = hand_bytes_per_client(rho)
        assert r["replied"] == 5 and r["rejected"] == 0
        assert [x["bytes_up"] for x in clients if x["round"] == r["round"]] == [per_client] * 5
        assert r["bytes_up"] == 5 * per_client
    assert rows[-1]["bytes_up"] * 8 < 5 * dense  # after warm-up: 1,120 of 9,640 bytes a client (8.6x)
    assert summary["final_accuracy"] > rows[0]["test_accuracy"] + 0.4, [r["test_accuracy"] for r in rows]


def test_dgc_client_state_u_v_persists_across_rounds(tmp_path, cfg_factory):
    cfg = dgc_config(cfg_factory, "rounds=3")
    grid = InProcessGrid(app, 10)
    run_inprocess(cfg, tmp_path, grid)
    clients = [json.loads(l) for l in (tmp_path / "clients.jsonl").read_text().splitlines()]
    rounds_of = {i: sum(1 for x in clients if x["client"] == i and x["status"] == "ok") for i in range(10)}
    assert any(n >= 2 for n in rounds_of.values()), rounds_of  # some client's state was reloaded
    for i, node in enumerate(grid.node_ids):
        state = ContextStore(grid.contexts[node]).load()
        n = rounds_of[i]
        if n == 0:
            assert state == {}
            continue
        assert sorted(state) == sorted(f"{t}.{f}" for t in range(4) for f in "uv")
        for t, shape in enumerate(SHAPES):
            u, v = state[f"{t}.u"], state[f"{t}.v"]
            assert u.shape == v.shape == shape and u.dtype == v.dtype == np.float32
            if len(shape) <= 1:
                # dense path: momentum SGD, u = m u + g is sent, v is never used
                assert not v.any() and u.any()
                continue
            # Sparse path. After ONE encode from fresh state u = v = g off the sent set and
            # u = v = 0 on it (masking), so u == v. After a second encode v = u_1 + u_2
            # minus what was sent, u = m u_1 + g_2: they differ, which only happens if
            # the state came back from the ContextStore between rounds.
            # Masking: both are 0 where the last round sent (k >= ceil(numel * RHO) entries).
            assert np.count_nonzero((u == 0) & (v == 0)) >= math.ceil(math.prod(shape) * RHO)
            if n == 1:
                np.testing.assert_array_equal(u, v)
            else:
                assert not np.allclose(u, v)
