"""Deployment hardening without starting Flower: the deployed round timeout, the last
round printed when the run finishes, the ``add-node`` command from any directory, and a
log line for each client that sent nothing back."""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
from types import SimpleNamespace

from fedsim.deploy import server as S


def test_deployed_round_timeout_default_and_precedence(tmp_path):
    plain = tmp_path / "a.yaml"
    plain.write_text("rounds: 2\n")
    sets = tmp_path / "b.yaml"
    sets.write_text("simulation: {round_timeout: 45}\n")
    assert S.deploy_round_timeout(plain, [], None) == S.DEPLOY_ROUND_TIMEOUT == 120.0
    assert S.deploy_round_timeout(sets, [], None) is None  # the config's own value is kept
    assert S.deploy_round_timeout(plain, ["simulation.round_timeout=30"], None) is None
    assert S.deploy_round_timeout(sets, [], 7.5) == 7.5  # --round-timeout wins
    d = S.Deployment(S.ServerOptions(config=plain, certs=tmp_path), say=lambda s: None)
    cfg, overrides = d.check()
    assert cfg.simulation.round_timeout == 120.0 and overrides[-1] == "simulation.round_timeout=120.0"
    d = S.Deployment(S.ServerOptions(config=sets, certs=tmp_path), say=lambda s: None)
    assert d.check()[0].simulation.round_timeout == 45.0


def test_follow_prints_the_last_round_written_just_before_finishing(tmp_path):
    """The ServerApp writes its last row and finishes between two polls: the row is printed."""
    out = tmp_path / "runs"
    run = out / "exp-1"
    run.mkdir(parents=True)
    rows = [{"round": r, "test_accuracy": 0.5 + r / 10, "sampled": 2, "replied": 2} for r in range(3)]
    (run / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n")
    said: list[str] = []
    d = S.Deployment(S.ServerOptions(config=tmp_path / "c.yaml", certs=tmp_path, poll=0.0), say=said.append)
    calls = []

    def status(run_id):
        calls.append(run_id)
        if len(calls) == 1:
            return "running", ""
        with open(run / "metrics.jsonl", "a") as f:  # the last rows land as the run finishes
            f.write(json.dumps(rows[1]) + "\n" + json.dumps(rows[2]) + "\n" + '{"round": 3, "te')
        return "finished:completed", ""

    d.status = status  # type: ignore[method-assign]
    cfg = SimpleNamespace(output=SimpleNamespace(dir=str(out)), name="exp", rounds=2)
    status_, _, found = d.follow(1, cfg, submitted=0.0)
    assert status_ == "finished:completed" and found == run
    printed = [s for s in said if "round " in s and "/2" in s]
    assert [p.split("round ")[1].split("/")[0] for p in printed] == ["0", "1", "2"]  # half a row: not printed


def test_add_node_command_works_from_any_directory(tmp_path):
    """The printed command has absolute, quoted paths: run from elsewhere it names the same files."""
    from fedsim.deploy.cli import register_command

    here = tmp_path / "my dir"
    (here / "pki" / "nodes").mkdir(parents=True)
    pub = here / "pki" / "nodes" / "n1.pub"
    pub.write_text("key")
    old = os.getcwd()
    os.chdir(here)
    try:
        from pathlib import Path

        cmd = register_command(Path("pki/nodes/n1.pub"), "n1", Path("fedsim-deploy"))
    finally:
        os.chdir(old)
    env_part, *argv = shlex.split(cmd)
    assert env_part == "FLWR_HOME=" + str(here / "fedsim-deploy" / "flwr")
    assert cmd.startswith("FLWR_HOME=" + shlex.quote(env_part.split("=", 1)[1]) + " ")
    assert os.path.isabs(argv[0]) and argv[1:4] == ["supernode", "register", str(pub)]
    assert argv[4:] == ["fedsim", "--name", "n1", "--format", "json"]
    # the shell reads it back from another directory: FLWR_HOME and the key path are intact
    # the shell runs it from another directory (flwr swapped for a probe): same home, same key
    probe_cmd = cmd.replace(shlex.quote(argv[0]) + " ", shlex.quote(sys.executable) + " -c "
                            "'import os, sys; print(os.environ[\"FLWR_HOME\"]); print(sys.argv[3])' ", 1)
    probe = subprocess.run(["sh", "-c", probe_cmd], cwd=tmp_path, capture_output=True, text=True)
    assert probe.stdout.splitlines() == [str(here / "fedsim-deploy" / "flwr"), str(pub)]


def test_a_client_that_never_replies_gets_a_log_line(tmp_path, caplog):
    from conftest import small_config

    from fedsim.clients.app import app
    from fedsim.engine.inprocess import InProcessGrid
    from fedsim.engine.server import run_server

    class GoesDown(InProcessGrid):  # partition 4 answers discovery, then never again
        def send_and_receive(self, messages, *, timeout=None):
            replies = super().send_and_receive(messages, timeout=timeout)
            self.down.add(self.node_ids[4])
            return replies

    cfg = small_config("rounds=1", "clients_per_round=10", "simulation.round_timeout=3")
    grid = GoesDown(app, cfg.data.num_clients)
    with caplog.at_level(logging.WARNING, logger="fedsim"):
        run_server(grid, cfg, tmp_path)
    lines = [r.getMessage() for r in caplog.records if "no reply" in r.getMessage()]
    assert lines == ["round 1: client 4 sent no reply within the round timeout of 3 s (late, or its node is down)"]


def test_export_data_refuses_a_natural_dataset_with_one_line(tmp_path):
    from typer.testing import CliRunner

    from fedsim.deploy.cli import app

    res = CliRunner().invoke(app, ["export-data", "configs/quickstart.yaml", str(tmp_path / "x.npz"),
                                   "--set", "data.name=synthetic", "--set", "data.partition.kind=natural",
                                   "--set", "data.num_clients=20"])
    assert res.exit_code == 2 and "natural" in res.output and not (tmp_path / "x.npz").exists()
