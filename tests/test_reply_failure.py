"""The failure policy (fedsim.engine.failure) and the runs it stops (issue 13)."""

from __future__ import annotations

import json
import math

import pytest
from conftest import run_inprocess

from fedsim.clients.app import app
from fedsim.config import ConfigError
from fedsim.engine.failure import FailurePolicy, RunFailed, count_failures
from fedsim.engine.inprocess import InProcessGrid
from fedsim.engine.server import run_server
from fedsim.engine.wrapper import ClientLog
from fedsim.metrics import read_rows


def entries(*statuses: str) -> list[ClientLog]:
    return [ClientLog(1, i, s) for i, s in enumerate(statuses)]


def test_failures_are_crashes_and_silences_not_rejections_or_simulated_drops():
    assert count_failures(entries("ok", "failed", "no-reply", "rejected", "dropped-before", "dropped-mid",
                                  "missed-deadline")) == (6, 2)


def test_the_failed_fraction_is_over_the_run_so_far():
    p = FailurePolicy(max_failed_fraction=0.5, max_consecutive_bad_rounds=None)
    p.after_round(1, entries("ok", "ok", "ok", "failed"), model_updated=True)  # 1/4
    p.after_round(2, entries("failed", "failed", "ok", "ok"), model_updated=True)  # 3/8: still <= 1/2
    p.after_round(3, entries("failed", "ok", "ok", "ok"), model_updated=True)  # 4/12
    with pytest.raises(RunFailed, match=r"round 4: 9 of 17 client-rounds failed \(53% > failure.max_failed_fraction"):
        p.after_round(4, entries("failed", "failed", "no-reply", "failed", "failed"), model_updated=True)  # 9/17


def test_bad_rounds_must_be_consecutive():
    p = FailurePolicy(max_failed_fraction=None, max_consecutive_bad_rounds=2)
    for rnd, updated in enumerate([False, True, False, True, False], start=1):
        p.after_round(rnd, entries("rejected", "failed"), model_updated=updated)  # failures off: never counted
    with pytest.raises(RunFailed, match="unchanged 2 rounds in a row .*failure.max_consecutive_bad_rounds = 2"):
        p.after_round(6, entries("rejected"), model_updated=False)


def test_null_switches_both_checks_off():
    p = FailurePolicy(None, None)
    for rnd in range(1, 20):
        p.after_round(rnd, entries("failed", "failed"), model_updated=False)


@pytest.mark.parametrize(("key", "value"), [
    ("failure.max_failed_fraction", "0"), ("failure.max_failed_fraction", "1.5"),
    ("failure.max_consecutive_bad_rounds", "0"), ("validation.max_update_norm", "-1"),
    ("validation.max_update_norm", ".inf"), ("validation.examples_tolerance", "2")])
def test_bad_limits_are_config_errors(cfg_factory, key, value):
    with pytest.raises(ConfigError, match=key.split(".")[1]):
        cfg_factory(f"{key}={value}")


def test_a_run_whose_clients_all_crash_stops_with_a_clear_error(tmp_path, cfg_factory):
    """Before: a dead worker made most client-rounds fail and the run still exited 0."""
    cfg = cfg_factory("rounds=4")
    grid = InProcessGrid(app, cfg.data.num_clients)
    orig = grid.push_messages

    def push(messages):  # every training message goes to a client whose data does not exist
        messages = list(messages)
        train = any(m.metadata.message_type == "train" for m in messages)
        for ctx in grid.contexts.values():
            ctx.node_config = {**ctx.node_config, "partition-id": 99 if train else ctx.node_id % 1000 // 7}
        return orig(messages)

    grid.push_messages = push
    with pytest.raises(RunFailed, match="after round 1: 5 of 5 client-rounds failed"):
        run_server(grid, cfg, tmp_path)
    assert [r["round"] for r in read_rows(tmp_path)] == [0, 1]  # the round that crossed the limit is recorded


def test_rounds_that_never_change_the_model_stop_the_run(tmp_path, cfg_factory):
    cfg = cfg_factory("rounds=5", "attack={name: nan, clients: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}",
                      "failure.max_consecutive_bad_rounds=2")
    with pytest.raises(RunFailed, match="after round 2: the model was left unchanged 2 rounds in a row"):
        run_inprocess(cfg, tmp_path)
    rows = read_rows(tmp_path)
    assert [r["rejected"] for r in rows[1:]] == [5, 5]


def test_a_gaussian_attack_of_std_1e30_leaves_the_model_finite(tmp_path, cfg_factory):
    """Before: the 1e30 updates were accepted, the model became NaN, every later honest reply
    was rejected, metrics.jsonl held a bare NaN, and the run exited 0."""
    cfg = cfg_factory("rounds=2", "attack={name: gaussian, params: {std: 1.0e+30}, clients: [1, 4, 6]}",
                      "clients_per_round=10", "validation.max_update_norm=1000")
    summary = run_inprocess(cfg, tmp_path)
    rows = read_rows(tmp_path)
    assert [r["rejected"] for r in rows[1:]] == [3, 3] and [r["replied"] for r in rows[1:]] == [7, 7]
    assert all(math.isfinite(r["test_loss"]) for r in rows)
    assert summary["final_accuracy"] > rows[0]["test_accuracy"]
    reasons = [json.loads(line)["reason"] for line in (tmp_path / "clients.jsonl").read_text().splitlines()]
    assert sum("max_update_norm" in r for r in reasons) == 6
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.jsonl"))


def test_without_a_norm_bound_the_diverged_run_stops_instead_of_exiting_0(tmp_path, cfg_factory):
    """No ``validation.max_update_norm``: the 1e30 updates are finite and accepted, the model
    diverges, every later honest reply is rejected (non-finite), and the failure policy stops
    the run; every row is still strict JSON (the infinite test loss is null)."""
    cfg = cfg_factory("rounds=5", "attack={name: gaussian, params: {std: 1.0e+30}, clients: [1, 4, 6]}",
                      "clients_per_round=10", "failure.max_consecutive_bad_rounds=2")
    with pytest.raises(RunFailed, match="after round 3: the model was left unchanged 2 rounds in a row"):
        run_inprocess(cfg, tmp_path)
    rows = read_rows(tmp_path)
    assert [r["replied"] for r in rows[1:]] == [10, 0, 0]
    assert rows[1]["test_loss"] is None  # inf: written as null, not a bare Infinity
