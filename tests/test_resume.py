"""Checkpoint and resume through the server loop, in process: a run stopped after round k
and resumed gives the same model bytes and metric rows as a run never stopped."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_inprocess

from fedsim.checkpoint import CheckpointError, latest
from fedsim.metrics import read_rows
from fedsim.runstatus import run_status

STATEFUL = ["strategy={name: fedavgm, params: {server_momentum: 0.9}}",  # server momentum
            "codec={name: topk, params: {density: 0.1}}",  # error feedback on every client
            "rounds=4", "clients_per_round=3", "eval_every=2"]
WALL = {"wall_time"}


class Stop(Exception):
    pass


def stop_after(k):
    def progress(row):
        if row["round"] == k:
            raise Stop
    return progress


def same_rows(a, b):
    strip = [{k: v for k, v in r.items() if k not in WALL} for r in a]
    return strip == [{k: v for k, v in r.items() if k not in WALL} for r in b]


def assert_resumes_exactly(cfg, tmp_path, stop_at):
    """A run stopped after round ``stop_at`` and resumed equals one never stopped (rows but
    wall time, final model bytes)."""
    from fedsim.clients.app import app
    from fedsim.engine.inprocess import InProcessGrid
    from fedsim.engine.server import run_server

    run_inprocess(cfg, tmp_path / "full")
    with pytest.raises(Stop):
        run_server(InProcessGrid(app, cfg.data.num_clients), cfg, tmp_path / "cut", stop_after(stop_at))
    run_inprocess(cfg, tmp_path / "cut")
    assert same_rows(read_rows(tmp_path / "full"), read_rows(tmp_path / "cut"))
    assert model_bytes(tmp_path / "full" / "model-final.npz") == model_bytes(tmp_path / "cut" / "model-final.npz")


def model_bytes(path):
    with np.load(path, allow_pickle=False) as f:
        return [(k, f[k].tobytes()) for k in f.files]


def test_stopped_run_resumes_to_the_uninterrupted_result(tmp_path, cfg_factory):
    from fedsim.clients.app import app
    from fedsim.engine.inprocess import InProcessGrid
    from fedsim.engine.server import run_server

    cfg = cfg_factory(*STATEFUL)
    full, cut = tmp_path / "full", tmp_path / "cut"
    run_inprocess(cfg, full)
    with pytest.raises(Stop):
        run_server(InProcessGrid(app, cfg.data.num_clients), cfg, cut, stop_after(2))
    assert run_status(cut)["state"] == "failed" and run_status(cut)["round"] == 2
    assert latest(cut).name == "round-000002"
    # what a kill after the checkpoint leaves behind: a row and half a client line of round 3
    with open(cut / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"round": 3, "test_accuracy": 0.0}) + "\n")
    with open(cut / "clients.jsonl", "a") as f:
        f.write('{"round": 3, "cli')
    run_inprocess(cfg, cut)  # a fresh grid: every client's state comes from the checkpoint
    assert same_rows(read_rows(full), read_rows(cut))
    assert (full / "clients.jsonl").read_text() == (cut / "clients.jsonl").read_text()
    assert model_bytes(full / "model-final.npz") == model_bytes(cut / "model-final.npz")
    assert model_bytes(full / "model-best.npz") == model_bytes(cut / "model-best.npz")
    assert run_status(cut) == {**run_status(cut), "state": "finished", "round": 4, "rounds": 4}


def test_without_client_state_the_resumed_run_differs(tmp_path, cfg_factory):
    """The differential check that the test above tests something: drop the saved client
    state (error-feedback memory) and the resumed run no longer matches."""
    from fedsim.clients.app import app
    from fedsim.engine.inprocess import InProcessGrid
    from fedsim.engine.server import run_server

    cfg = cfg_factory(*STATEFUL)
    full, cut = tmp_path / "full", tmp_path / "cut"
    run_inprocess(cfg, full)
    with pytest.raises(Stop):
        run_server(InProcessGrid(app, cfg.data.num_clients), cfg, cut, stop_after(2))
    saved = list((latest(cut) / "clients").glob("client-*.npz"))
    assert saved  # topk with error feedback: clients hold state
    for p in saved:
        p.unlink()
    run_inprocess(cfg, cut)
    assert model_bytes(full / "model-final.npz") != model_bytes(cut / "model-final.npz")


def test_a_grid_without_client_state_hooks_refuses_a_stateful_resume(tmp_path, cfg_factory):
    from fedsim.clients.app import app
    from fedsim.engine.inprocess import InProcessGrid
    from fedsim.engine.server import run_server

    class FlowerLike(InProcessGrid):  # Flower's engine: client state out of the server's reach
        save_client_states = None
        load_client_states = None

    cfg = cfg_factory(*STATEFUL)
    with pytest.raises(Stop):
        run_server(FlowerLike(app, cfg.data.num_clients), cfg, tmp_path, stop_after(2))
    assert json.loads((latest(tmp_path) / "state.json").read_text())["client_states"] is None
    with pytest.raises(CheckpointError, match="cannot save client state"):
        run_server(FlowerLike(app, cfg.data.num_clients), cfg, tmp_path)


@pytest.mark.parametrize("overrides", [
    # MoNNA: one model per client in the strategy
    ["strategy={name: monna, params: {f: 1, lr: 0.1, local_steps: 1}}", "clients_per_round=10"],
    # nested dithering: the last aggregated update (stale side information) and a reference codec
    ["strategy={name: ndqsg-nested, params: {reference_clients: 1}}",
     "codec={name: ndqsg, params: {m1: 3, m2: 1, alpha: 0.4, bucket: 64}}"],
    # NNM around FedAdam (Adam moments in the inner strategy), DGC on the clients (momentum + residual)
    ["strategy={name: nnm, params: {f: 1, inner: fedadam}}", "codec={name: dgc, params: {density: 0.1}}"],
], ids=["monna", "ndqsg-nested", "nnm-fedadam-dgc"])
def test_stateful_strategies_resume_exactly(tmp_path, cfg_factory, overrides):
    cfg = cfg_factory("rounds=3", *overrides)
    assert_resumes_exactly(cfg, tmp_path, stop_at=1)


def test_ef21w_resume_is_refused_with_the_reason(tmp_path, cfg_factory, monkeypatch):
    """EF21-W builds its wire objects in its first round (from the model and the client
    ids): with its ``resume`` hook (called through the wrapper's ``prepare_resume``) made a
    no-op, a fresh EF21W lacks them, so its checkpoint cannot be restored; said clearly, by name."""
    from fedsim.clients.app import app
    from fedsim.engine.inprocess import InProcessGrid
    from fedsim.engine.server import run_server
    from fedsim.strategies.ef21w import EF21W

    monkeypatch.setattr(EF21W, "resume", lambda self, view, arrays: None)

    cfg = cfg_factory("strategy={name: ef21w, params: {compressor: topk, k: 8}}", "model.name=logreg-ncvx",
                      "model.params={lam: 0.1}", "data.name=digits-binary", "clients_per_round=10")
    with pytest.raises(Stop):
        run_server(InProcessGrid(app, cfg.data.num_clients), cfg, tmp_path, stop_after(1))
    with pytest.raises(CheckpointError, match="EF21W.* a fresh EF21W does not have .*cannot be resumed"):
        run_server(InProcessGrid(app, cfg.data.num_clients), cfg, tmp_path)


def test_prepare_resume_lets_ef21w_resume_exactly(tmp_path, cfg_factory):
    """With ``resume`` running EF21-W's first-round set-up, its checkpoint restores
    (x, g, the acknowledged rounds, the learned L_i, the plan) and the run resumes exactly."""
    cfg = cfg_factory("strategy={name: ef21w, params: {compressor: topk, k: 8}}", "model.name=logreg-ncvx",
                      "model.params={lam: 0.1}", "data.name=digits-binary", "clients_per_round=10", "rounds=3")
    assert_resumes_exactly(cfg, tmp_path, stop_at=1)
