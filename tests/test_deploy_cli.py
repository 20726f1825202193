"""``fedsim deploy``: the pieces of the server orchestration and the CLI commands, without
starting Flower (the real processes are in tests/test_deploy_e2e.py)."""

from __future__ import annotations

import shlex
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from fedsim.cli import app
from fedsim.deploy import server as S
from fedsim.deploy.procs import DeployError, lock_directory, run_json, start, stop, stop_all, wait_for_text

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["deploy", *args])


# --------------------------------------------------------------------------- server pieces


def test_generated_app_is_a_valid_flower_app_whose_components_resolve(tmp_path):
    from flwr.cli.config_utils import load_and_validate

    app_dir = S.write_app(tmp_path / "app")
    assert sorted(p.name for p in app_dir.iterdir()) == ["pyproject.toml"]  # no fedsim/ to shadow
    config, _ = load_and_validate(app_dir / "pyproject.toml", check_module=True)  # what `flwr run` checks
    flwr = config["tool"]["flwr"]["app"]
    assert flwr["components"] == {"serverapp": "fedsim.server_app:app", "clientapp": "fedsim.clients.app:app"}
    assert set(flwr["config"]) == {"config", "overrides"}  # Flower overrides declared keys only


def test_run_config_quotes_overrides_for_the_server_app(tmp_path):
    cfg = tmp_path / "c.yaml"
    rc = S.run_config(cfg, ["rounds=2", "model.params={hidden: 16}", "output.dir=/a b"])
    assert rc["config"] == str(cfg.resolve())
    # fedsim.server_app splits the overrides with shlex: the round trip is exact
    assert shlex.split(str(rc["overrides"])) == ["rounds=2", "model.params={hidden: 16}", "output.dir=/a b"]


def test_registration_outcome():
    assert S.registration_outcome({"success": True, "node-id": 1}) == "registered"
    in_use = {"success": False, "error-message": "[code: 23] Public key already in use."}
    assert S.registration_outcome(in_use) == "known"
    with pytest.raises(DeployError, match="registration failed: nope"):
        S.registration_outcome({"success": False, "error-message": "nope"})


def test_find_run_dir_takes_the_newest_since(tmp_path):
    old = tmp_path / "exp-1"
    old.mkdir()
    since = time.time() + 5  # the old one was made before the submission
    assert S.find_run_dir(tmp_path, "exp", since) is None
    assert S.find_run_dir(tmp_path, "exp", time.time() - 10) == old
    assert S.find_run_dir(tmp_path / "missing", "exp", 0) is None


def test_round_line():
    row = {"round": 2, "test_accuracy": 0.5, "replied": 2, "sampled": 3, "failed": 1, "rejected": 0, "bytes_up": 2e6}
    assert S.round_line(row, 5) == "round 2/5  acc 0.5000  replied 2/3  failed 1  rejected 0  up 2.000 MB"
    assert S.round_line({"round": 0, "test_accuracy": None}, 5) == "round 0/5  acc -"


def test_node_public_keys(tmp_path):
    invoke("certs", str(tmp_path / "pki"), "--nodes", "b,a", "--nodes", "c")
    assert [p.name for p in S.node_public_keys(tmp_path / "pki")] == ["a.pub", "b.pub", "c.pub"]


# --------------------------------------------------------------------------- process helpers


def test_wait_for_text_fails_fast_when_the_process_exits(tmp_path):
    proc = start("echo", ["sh", "-c", "echo hello; exit 3"], {"PATH": "/usr/bin:/bin"}, tmp_path / "echo.log")
    t0 = time.monotonic()
    with pytest.raises(DeployError, match="exited with code 3 before 'never'"):
        wait_for_text(proc, "never", timeout=30)
    assert time.monotonic() - t0 < 10
    wait_for_text(proc, "hello", timeout=1)  # already there


def test_stop_kills_the_whole_group(tmp_path):
    proc = start("sleepers", ["sh", "-c", "sleep 60 & sleep 60"], {"PATH": "/usr/bin:/bin"}, tmp_path / "s.log")
    time.sleep(0.3)
    assert stop(proc, grace=5) is not None and not proc.alive()


def test_stop_all_stops_every_group_within_the_grace(tmp_path):
    env = {"PATH": "/usr/bin:/bin"}
    procs = [start(f"s{i}", ["sh", "-c", "trap '' TERM; sleep 60 & sleep 60"], env, tmp_path / f"{i}.log")
             for i in range(3)]
    time.sleep(0.3)
    t0 = time.monotonic()
    stop_all(procs, grace=1.0)  # they ignore SIGTERM: one shared grace, then SIGKILL
    assert time.monotonic() - t0 < 5 and not any(p.alive() for p in procs)


def test_run_json_reads_json_after_noise(tmp_path):
    assert run_json(["sh", "-c", "echo 'Loading...'; echo '{\"success\": true}'; echo trailing"],
                    {"PATH": "/usr/bin:/bin"}) == {"success": True}
    with pytest.raises(DeployError, match="without JSON"):
        run_json(["sh", "-c", "echo oops; exit 1"], {"PATH": "/usr/bin:/bin"})


def test_lock_directory_refuses_a_second_holder(tmp_path):
    import subprocess
    import sys

    held = lock_directory(tmp_path)
    code = ("import sys; from pathlib import Path; from fedsim.deploy.procs import lock_directory, DeployError\n"
            "try:\n    lock_directory(Path(sys.argv[1]))\nexcept DeployError as e:\n    print(e); sys.exit(7)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 7 and "another `fedsim deploy server`" in r.stdout
    held.close()


# --------------------------------------------------------------------------- commands


def test_certs_command_adds_addresses_to_the_defaults(tmp_path):
    from cryptography import x509

    r = invoke("certs", str(tmp_path / "pki"), "--ip", "192.168.1.10", "--dns", "pi-server.local", "--nodes", "n0")
    assert r.exit_code == 0, r.output
    cert = x509.load_pem_x509_certificate((tmp_path / "pki" / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "pi-server.local"}
    assert {str(i) for i in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "192.168.1.10"}
    assert (tmp_path / "pki" / "nodes" / "n0.pub").exists()
    again = invoke("certs", str(tmp_path / "pki"))
    assert again.exit_code == 2 and "refusing to overwrite" in again.output


def test_add_node_prints_the_register_command(tmp_path):
    invoke("certs", str(tmp_path / "pki"))
    r = invoke("add-node", str(tmp_path / "pki"), "pi-kitchen")
    assert r.exit_code == 0, r.output
    assert "flwr supernode register" in r.output and "pi-kitchen.pub fedsim --name pi-kitchen" in r.output
    assert (tmp_path / "pki" / "nodes" / "pi-kitchen").stat().st_mode & 0o777 == 0o600
    bad = invoke("add-node", str(tmp_path / "pki"), "../evil")
    assert bad.exit_code == 2 and "node name must match" in bad.output


def test_client_dry_run_builds_the_supernode_command(tmp_path):
    invoke("certs", str(tmp_path / "pki"), "--nodes", "n3")
    r = invoke("client", "--superlink", "10.0.0.2:9092", "--partition-id", "3", "--num-partitions", "8",
               "--certs", str(tmp_path / "pki"), "--name", "n3", "--trainer", "numpy", "--node-config", "room=lab 2",
               "--port", "9200", "--max-retries", "5", "--dry-run")
    assert r.exit_code == 0, r.output
    argv = shlex.split(r.output.strip().splitlines()[-1].removeprefix("exec "))
    assert argv[0].endswith("flower-supernode")
    assert argv[1:] == [
        "--grpc-rere", "--superlink", "10.0.0.2:9092",
        "--root-certificates", str((tmp_path / "pki" / "ca.pem").resolve()),
        "--auth-supernode-private-key", str((tmp_path / "pki" / "nodes" / "n3").resolve()),
        "--node-config", 'partition-id=3 num-partitions=8 trainer="numpy" room="lab 2"',
        "--host", "127.0.0.1", "--port", "9200", "--max-retries", "5"]


@pytest.mark.parametrize("args, msg", [
    ((), "give --root-cert"),
    (("--insecure", "--root-cert", "x.pem"), "--insecure takes no"),
    (("--root-cert", "/nonexistent/ca.pem"), "not found"),
    (("--insecure", "--trainer", "jax"), "--trainer must be"),
    (("--insecure", "--node-config", "novalue"), "expected key=value"),
])
def test_client_errors(args, msg):
    r = invoke("client", "--superlink", "127.0.0.1:9092", "--partition-id", "0", "--num-partitions", "2",
               *args, "--dry-run")
    assert r.exit_code == 2 and msg in r.output, r.output


def test_client_partition_out_of_range():
    r = invoke("client", "--superlink", "127.0.0.1:9092", "--partition-id", "2", "--num-partitions", "2",
               "--insecure", "--dry-run")
    assert r.exit_code == 2 and "partition-id must be in [0, num-partitions)" in r.output


def test_server_stops_before_starting_anything_on_bad_input(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rounds: 0\n")
    r = invoke("server", str(cfg), "--certs", str(tmp_path), "--workdir", str(tmp_path / "w"))
    assert r.exit_code == 2 and "rounds" in r.output
    cfg.write_text("rounds: 1\ndata: {name: digits, num_clients: 2}\nclients_per_round: 2\n")
    r = invoke("server", str(cfg), "--certs", str(tmp_path / "none"), "--workdir", str(tmp_path / "w"))
    assert r.exit_code == 1 and "fedsim deploy certs" in r.output
    assert not (tmp_path / "w" / "superlink.log").exists()


def test_export_data_gives_every_client_the_same_examples(tmp_path):
    """digits -> npz: same split, same partition, so the same run."""
    from fedsim.config import load_config
    from fedsim.data.datasets import load_partition

    base = ["data.name=digits", "data.num_clients=5", "clients_per_round=2", "seed=3"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\n")
    r = invoke("export-data", str(cfg), str(tmp_path / "d.npz"), *[a for s in base for a in ("--set", s)])
    assert r.exit_code == 0, r.output
    a = load_config(None, base)
    b = load_config(None, [*base, "data.name=npz", f"data.path={tmp_path / 'd.npz'}"])
    for client in range(5):
        (xa, ya), (xb, yb) = load_partition(a.data, a.seed, client), load_partition(b.data, b.seed, client)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
