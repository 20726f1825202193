"""The generic strategy state of :mod:`fedsim.checkpoint`, atomic checkpoints, the grid's
client-state hooks and the run status file."""

from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np
import pytest
from typer.testing import CliRunner

from fedsim.checkpoint import (
    CheckpointError,
    latest,
    load_state,
    object_state,
    restore_object_state,
    save_checkpoint,
    save_state,
)
from fedsim.runstatus import run_status, unfinished_note, write_status
from fedsim.wire import to_record


class Inner:
    def __init__(self):
        self.momentum = None
        self.by_client = {}
        self.lr = 0.1


class Holder:
    """A strategy-like object: data, configuration, a back-reference and an inner object."""

    def __init__(self, wrapper=None):
        self.wrapper = wrapper
        self.fn = len  # configuration: left out
        self.inner = Inner()
        self.count = 0
        self.arrays = None
        self.pairs = ()
        self.names = set()


def roundtrip(obj, fresh, tmp_path, **kw):
    save_state(tmp_path, "s", obj, **kw)
    load_state(tmp_path, "s", fresh)
    return fresh


def test_walker_round_trips_numpy_state_exactly(tmp_path):
    w = object()
    a = Holder(w)
    a.count, a.pairs, a.names = 7, (1, "x", None), {3, 1}
    a.arrays = to_record({"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2)})
    a.inner.momentum = [np.full(3, np.nan), np.float32(2.5)]
    a.inner.by_client = {0: np.zeros(2, np.float32), 17: np.array([1.0, -np.inf])}
    a.inner.lr = float("inf")
    arrays, tree = object_state(a, skip=(w,))
    assert "wrapper" not in tree and "fn" not in tree
    b = roundtrip(a, Holder(w), tmp_path, skip=(w,))
    assert b.count == 7 and b.pairs == (1, "x", None) and b.names == {1, 3} and b.wrapper is w
    assert list(b.arrays.keys()) == ["w", "b"]
    assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a.arrays.values(), b.arrays.values()))
    assert np.isnan(b.inner.momentum[0]).all() and b.inner.momentum[1] == np.float32(2.5)
    assert type(b.inner.momentum[1]) is np.float32
    assert sorted(b.inner.by_client) == [0, 17] and b.inner.by_client[17].tolist() == [1.0, -np.inf]
    assert b.inner.lr == float("inf")


def test_plain_only_and_exclude_leave_objects_out():
    a = Holder()
    a.count = 4
    arrays, tree = object_state(a, plain_only=True, exclude=frozenset({"names"}))
    assert set(tree) == {"wrapper", "count", "arrays", "pairs"}  # no inner object, no excluded name
    b = Holder()
    b.inner.lr = 0.5
    restore_object_state(b, arrays, tree)
    assert b.count == 4 and b.inner.lr == 0.5  # the inner object is left as the fresh one has it


class Point(NamedTuple):
    x: float
    y: np.ndarray


def test_objects_a_fresh_strategy_lacks_are_refused_clearly(tmp_path):
    a, fresh = Holder(), Holder()
    a.extra = Inner()  # built during a round: a fresh one has no such attribute
    save_state(tmp_path, "s", a)
    with pytest.raises(CheckpointError, match="Holder.extra: the checkpoint holds a Inner"):
        load_state(tmp_path, "s", fresh)
    a = Holder()
    a.point = Point(1.0, np.ones(2))  # a NamedTuple outside fedsim: not rebuilt by name
    with pytest.raises(CheckpointError, match="not data a checkpoint can hold"):
        object_state(a)


class Renamed(Holder):
    state_renames = {"mode": "mode_now"}  # the attribute was called mode when it was saved

    def mode(self):  # a method now has the old name
        return "method"


def test_a_renamed_attribute_restores_under_its_new_name_and_no_method_is_hidden():
    a = Holder()
    a.mode = "zero"  # saved by the class before the rename
    arrays, tree = object_state(a)
    r = Renamed()
    restore_object_state(r, arrays, tree)
    assert r.mode_now == "zero" and "mode" not in vars(r) and r.mode() == "method"

    class Unmapped(Holder):
        def mode(self):
            return "method"

    u = Unmapped()
    with pytest.raises(CheckpointError, match=r"Unmapped.mode: .* method of Unmapped.*state_renames"):
        restore_object_state(u, arrays, tree)
    assert u.mode() == "method"


def test_flower_fedadam_state_survives(tmp_path):
    from flwr.serverapp.strategy import FedAdam

    s = FedAdam()
    s.current_arrays = {"w": np.ones(3, np.float32)}
    s.m_t, s.v_t = {"w": np.full(3, 0.5, np.float32)}, {"w": np.full(3, 0.25, np.float32)}
    r = roundtrip(s, FedAdam(), tmp_path)
    assert r.m_t["w"].tolist() == [0.5] * 3 and r.v_t["w"].dtype == np.float32 and r.beta_1 == s.beta_1


def test_a_fedsim_dataclass_is_rebuilt(tmp_path):
    from fedsim.engine.wrapper import ClientLog

    a = Holder()
    a.logs = [ClientLog(3, 5, "ok", bytes_up=9, train_loss=0.5)]
    b = Holder()
    roundtrip(a, b, tmp_path)
    assert b.logs == a.logs and isinstance(b.logs[0], ClientLog)
    tree = json.loads((tmp_path / "s.json").read_text())
    tree["logs"]["l"][0]["rec"] = "os:system"  # a checkpoint names a type outside fedsim: refused
    (tmp_path / "s.json").write_text(json.dumps(tree))
    with pytest.raises(CheckpointError, match="outside fedsim"):
        load_state(tmp_path, "s", Holder())


def test_checkpoints_replace_each_other_atomically(tmp_path):
    save_checkpoint(tmp_path, 1, to_record({"w": np.zeros(2)}), {"s": (Holder(), (), False, frozenset())},
                    None, {"rows": [{"round": 0}]})
    assert latest(tmp_path).name == "round-000001"
    # a checkpoint killed half-way: its partial directory is never pointed at
    (tmp_path / "checkpoint" / ".round-000002.partial").mkdir()
    assert latest(tmp_path).name == "round-000001"
    save_checkpoint(tmp_path, 2, to_record({"w": np.ones(2)}), {}, None, {"rows": []})
    names = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert names == ["latest.json", "round-000002"]
    state = json.loads((latest(tmp_path) / "state.json").read_text())
    assert state["round"] == 2 and state["client_states"] is None  # a grid without the hook
    (tmp_path / "checkpoint" / "latest.json").write_text('{"dir": "../../etc"}')
    assert latest(tmp_path) is None


def test_inprocess_grid_saves_and_loads_client_state(tmp_path):
    from fedsim.clients.app import app
    from fedsim.engine.inprocess import InProcessGrid
    from fedsim.state import ContextStore

    g = InProcessGrid(app, 4)
    ctx = {int(c.node_config["partition-id"]): c for c in g.contexts.values()}
    ContextStore(ctx[1]).save({"e": np.arange(3, dtype=np.float32)})
    ContextStore(ctx[3]).save({"e": np.ones(2), "m": np.zeros(1)})
    assert g.save_client_states(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["client-1.npz", "client-3.npz"]
    h = InProcessGrid(app, 4)
    assert h.load_client_states(tmp_path) == 2
    hctx = {int(c.node_config["partition-id"]): c for c in h.contexts.values()}
    assert ContextStore(hctx[1]).load()["e"].tolist() == [0, 1, 2] and ContextStore(hctx[0]).load() == {}
    assert sorted(ContextStore(hctx[3]).load()) == ["e", "m"]
    (tmp_path / "client-9.npz").write_bytes((tmp_path / "client-1.npz").read_bytes())
    with pytest.raises(ValueError, match="client-9.npz' names no client"):
        h.load_client_states(tmp_path)


def test_run_status_and_compare_warns_about_unfinished_runs(tmp_path):
    from fedsim.cli import app

    assert run_status(tmp_path) == {"state": "unknown"}
    write_status(tmp_path, "running", 3, 10)
    s = run_status(tmp_path)
    assert (s["state"], s["round"], s["rounds"]) == ("running", 3, 10)
    assert "unfinished (stopped after round 3 of 10" in unfinished_note("r", s)
    write_status(tmp_path, "finished", 10, 10)
    assert unfinished_note("r", run_status(tmp_path)) is None
    with pytest.raises(ValueError):
        write_status(tmp_path, "done", 1, 1)
    run = tmp_path / "killed"
    run.mkdir()
    row = {"round": 0, "test_accuracy": 0.1, "test_loss": 1.0, "cum_bytes_up": 0, "cum_bytes_down": 0, "wall_time": 0.0}
    (run / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    write_status(run, "running", 0, 20)
    res = CliRunner().invoke(app, ["compare", str(run), "--out", str(tmp_path / "plots")])
    assert res.exit_code == 0 and "run killed: unfinished (stopped after round 0 of 20" in res.output


def test_min_interval_skips_due_checkpoints_but_not_the_first_or_the_last(tmp_path, cfg_factory):
    """checkpoint.min_interval_s: round 1 saves (no previous one), rounds 2-3 are skipped (the
    previous is younger than an hour), the last round saves."""
    from unittest import mock

    from conftest import run_inprocess

    from fedsim.engine import server

    cfg = cfg_factory("rounds=4", "checkpoint.min_interval_s=3600")
    with mock.patch.object(server.checkpoint, "save_checkpoint", wraps=server.checkpoint.save_checkpoint) as spy:
        run_inprocess(cfg, tmp_path)
    assert [c.args[1] for c in spy.call_args_list] == [1, 4]
