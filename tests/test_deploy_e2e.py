"""A real deployment on 127.0.0.1: ``fedsim deploy server`` (a SuperLink with TLS and
SuperNode authentication, certificates made here) and three ``fedsim deploy client``
SuperNodes, one from a virtual environment holding only the ``edge`` extra (no torch,
no Ray: it trains with the numpy trainer). A two-round FedAvg run with the top-k codec
completes and writes its metrics while one SuperNode is stopped mid-run (SIGTERM to its
process group); an unregistered node is refused; a plaintext node cannot connect.

Everything is started the way users start it, every wait is bounded and every process
group is stopped in teardown. The scenario runs once (module fixture); the tests read
its outcome.

Cost: the scenario takes about 60-120 s on a 2-core machine. The edge environment is
built once per ``pyproject.toml`` (``pip install .[edge]``: 40-100 s here and 320 MB, 58
packages, plus setuptools and wheel) and cached in ``$FEDSIM_TEST_CACHE`` (default ``~/.cache/fedsim-tests``); each
session then reinstalls only fedsim into it (``--no-deps``, a few seconds). If the
package index cannot be reached, the edge node is replaced by a numpy-trainer node of
the full environment and the edge test is skipped, with pip's reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from fedsim.data.npz import write_npz
from fedsim.deploy import commands as C
from fedsim.deploy.certs import write_node_keypair
from fedsim.deploy.procs import Proc, bin_dir, start, stop_all, wait_for_text

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
SCENARIO_TIMEOUT = 240.0  # the run itself; each step below has its own bound


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _fedsim(bin_: Path | str) -> list[str]:
    script = Path(bin_) / "fedsim"
    return [str(script)] if script.is_file() else [str(Path(bin_) / "python"), "-m", "fedsim.cli"]


def _full_env(home: Path) -> dict[str, str]:
    """This environment's processes: its bin dirs first; PYTHONPATH names this checkout so
    Flower's ``flwr-serverapp``/``flwr-clientapp`` import the fedsim under test even when
    flwr's scripts live in another venv."""
    env = C.venv_env(bin_dir(), str(home))
    env["PYTHONPATH"] = str(ROOT)
    env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = "1"
    return env


def _edge_env(bin_: Path, home: Path) -> dict[str, str]:
    env = C.venv_env(str(bin_), str(home))
    env.pop("PYTHONPATH", None)  # nothing from the full environment
    env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = "1"
    return env


# --------------------------------------------------------------------------- edge venv


def _cache_root() -> Path:
    return Path(os.environ.get("FEDSIM_TEST_CACHE") or Path.home() / ".cache" / "fedsim-tests")


def _pip(python: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args], text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def edge_bin() -> tuple[Path | None, str]:
    """(the edge venv's bin, "") or (None, why it could not be made)."""
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + sys.version.encode()).hexdigest()[:12]
    venv = _cache_root() / f"edge-venv-{key}"
    python = venv / "bin" / "python"
    if not (venv / ".ready").exists():
        shutil.rmtree(venv, ignore_errors=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        try:
            # setuptools/wheel too, so later sessions reinstall fedsim without build isolation
            r = _pip(python, "install", "-q", f"{ROOT}[edge]", "setuptools>=68", "wheel", timeout=600)
        except subprocess.TimeoutExpired:
            return None, "pip install .[edge] took over 600 s"
        if r.returncode != 0:
            return None, f"pip install .[edge] failed (index unreachable?): {r.stdout.strip().splitlines()[-1:]}"
        (venv / ".ready").write_text(f"built in {time.monotonic() - t0:.0f} s\n")
    else:  # refresh fedsim only: the dependencies are keyed by pyproject.toml
        r = _pip(python, "install", "-q", "--no-deps", "--no-build-isolation", "--force-reinstall", str(ROOT),
                 timeout=300)
        if r.returncode != 0:
            return None, f"reinstalling fedsim into the edge venv failed: {r.stdout.strip()[-500:]}"
    probe = subprocess.run([str(python), "-c", "import importlib.util as u, sys; "
                            "sys.exit(any(u.find_spec(m) for m in ('torch', 'ray', 'sklearn', 'mlxtend')))"],
                           timeout=60)
    assert probe.returncode == 0, f"the edge venv {venv} holds torch, ray, sklearn or mlxtend"
    return venv / "bin", ""


# --------------------------------------------------------------------------- scenario


@dataclass
class Outcome:
    root: Path
    server_rc: int | None = None
    server_log: str = ""
    run_dir: Path | None = None
    rows: list[dict] = field(default_factory=list)
    clients: list[dict] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)
    codes: dict[str, int | None] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    edge_reason: str = ""


def _write_inputs(root: Path) -> Path:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=360)
    x = rng.integers(0, 80, size=(360, 8, 8)).astype(np.uint8)
    x[np.arange(360), y * 2] += 170  # class c lights row 2c: learnable in a round
    data = write_npz(root / "data.npz", x[:300], y[:300], x[300:], y[300:])
    cfg = root / "deploy.yaml"
    cfg.write_text(
        "name: deploy-e2e\nseed: 0\nrounds: 2\nclients_per_round: 3\n"
        f"data: {{name: npz, path: {data}, num_clients: 3, partition: {{kind: iid}}}}\n"
        "model: {name: mlp, params: {hidden: 16}}\n"
        "train: {local_epochs: 1, batch_size: 20, lr: 0.2}\n"
        "strategy: {name: fedavg}\ncodec: {name: topk, params: {density: 0.1}}\n"
        "simulation: {round_timeout: 20}\n"
        f"output: {{dir: {root / 'runs'}, plots: false, progress: false}}\n")
    return cfg


@pytest.fixture(scope="module")
def outcome(tmp_path_factory, edge_bin) -> Outcome:
    root = tmp_path_factory.mktemp("deploy")
    out = Outcome(root)
    edge, out.edge_reason = edge_bin
    full = Path(sys.executable).parent
    fleet, control, *appio = _free_ports(7)
    procs: dict[str, Proc] = {}
    t0 = time.monotonic()

    def lap(name: str) -> None:
        out.seconds[name] = round(time.monotonic() - t0, 1)

    def node(name: str, i: int | None, port: int, bin_: Path, env: dict[str, str], *extra: str) -> Proc:
        argv = [*_fedsim(bin_), "deploy", "client", "--superlink", f"127.0.0.1:{fleet}", "--port", str(port),
                "--partition-id", str(0 if i is None else i), "--num-partitions", "3",
                "--flwr-home", str(root / f"home-{name}"), *extra]
        return start(name, argv, env, root / f"{name}.log")

    try:
        cfg = _write_inputs(root)
        subprocess.run([*_fedsim(full), "deploy", "certs", str(root / "pki"), "--nodes", "n0,n1,n2"],
                       env=_full_env(root / "home-cli"), check=True, timeout=60, stdout=subprocess.DEVNULL)
        rogue_key, _ = write_node_keypair(root / "outsider", "rogue")  # never registered
        pki = root / "pki"
        lap("certs")

        procs["server"] = start("server", [
            *_fedsim(full), "deploy", "server", str(cfg), "--certs", str(pki), "--workdir", str(root / "work"),
            "--fleet-address", f"127.0.0.1:{fleet}", "--control-port", str(control), "--timeout", "180",
            "--poll", "2"], _full_env(root / "home-server"), root / "server.log")
        wait_for_text(procs["server"], "node n2: registered", 90)
        lap("registered")

        for i in (0, 1):
            procs[f"n{i}"] = node(f"n{i}", i, appio[i], full, _full_env(root / f"home-n{i}"),
                                  "--certs", str(pki), "--name", f"n{i}")
        if edge is not None:
            procs["n2"] = node("n2", 2, appio[2], edge, _edge_env(edge, root / "home-n2"),
                               "--certs", str(pki), "--name", "n2")
        else:
            procs["n2"] = node("n2", 2, appio[2], full, _full_env(root / "home-n2"), "--certs", str(pki),
                               "--name", "n2", "--trainer", "numpy")
        for n in ("n0", "n1", "n2"):
            wait_for_text(procs[n], "SuperNode ID", 60)
        lap("nodes up")

        # An unregistered key, and a plaintext node: both must be refused, within bounds.
        procs["rogue"] = node("rogue", None, appio[3], full, _full_env(root / "home-rogue"), "--root-cert",
                              str(pki / "ca.pem"), "--key", str(rogue_key), "--max-retries", "2",
                              "--max-wait-time", "10")
        procs["plain"] = node("plain", None, appio[4], full, _full_env(root / "home-plain"), "--insecure",
                              "--max-retries", "2", "--max-wait-time", "5")

        # n1 dies mid-run: as soon as it has its round-1 training message.
        wait_for_text(procs["n1"], "train message", 120)
        os.killpg(procs["n1"].pid, signal.SIGTERM)
        lap("n1 killed")

        for name in ("rogue", "plain"):
            try:
                out.codes[name] = procs[name].popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                out.codes[name] = None
        out.server_rc = procs["server"].popen.wait(timeout=SCENARIO_TIMEOUT)
        lap("server done")
    finally:
        stop_all(list(procs.values()), grace=15)
        for name, proc in procs.items():
            out.logs[name] = proc.text()
        lap("stopped")
    out.server_log = out.logs.get("server", "")
    runs = sorted((root / "runs").glob("deploy-e2e-*"))
    if runs:
        out.run_dir = runs[-1]
        out.rows = [json.loads(x) for x in (out.run_dir / "metrics.jsonl").read_text().splitlines() if x]
        out.clients = [json.loads(x) for x in (out.run_dir / "clients.jsonl").read_text().splitlines() if x]
    print("deploy e2e timings (s since start):", out.seconds)
    return out


def _diag(o: Outcome) -> str:
    return f"server log:\n{o.server_log[-4000:]}\nrun dir: {o.run_dir}\ntimings: {o.seconds}"


def test_run_completes_and_writes_metrics(outcome):
    assert outcome.server_rc == 0, _diag(outcome)
    assert "completed" in outcome.server_log
    assert [r["round"] for r in outcome.rows] == [0, 1, 2], _diag(outcome)
    assert (outcome.run_dir / "summary.json").exists()
    last = outcome.rows[-1]
    assert last["test_accuracy"] is not None and last["test_accuracy"] > outcome.rows[0]["test_accuracy"]


def test_codec_compresses_the_uplink(outcome):
    for r in outcome.rows[1:]:
        per_down = r["bytes_down"] / max(r["sampled"], 1)
        per_up = r["bytes_up"] / max(r["replied"], 1)
        assert 0 < per_up < 0.5 * per_down, r  # top-k at density 0.1: values + indices << dense


def test_killed_node_is_dropped_and_the_round_completes(outcome):
    assert outcome.server_rc == 0, _diag(outcome)
    by = {(c["round"], c["client"]): c for c in outcome.clients}
    # after the kill, client 1 either fails (the SuperLink answers for its dead node, and
    # the wrapper maps that reply back to it) or is no longer sampled (its node has left)
    lost = [r for r in (1, 2) if by.get((r, 1), {"status": "absent"})["status"] != "ok"]
    assert lost, f"client 1 was killed in round 1 but reported ok in every round: {outcome.clients}"
    assert all(by[(r, 1)]["status"] == "failed" for r in lost if (r, 1) in by), outcome.clients
    for r in outcome.rows[1:]:
        assert r["replied"] >= 2, r  # the two live nodes always arrive
    assert all(by[(r, 0)]["status"] == "ok" for r in (1, 2))


def test_edge_node_trains_with_numpy_without_torch(outcome):
    if outcome.edge_reason:
        pytest.skip(f"no edge-only venv: {outcome.edge_reason}")
    by = {(c["round"], c["client"]): c for c in outcome.clients}
    assert by[(1, 2)]["status"] == "ok" and by[(2, 2)]["status"] == "ok", outcome.clients
    assert "fedsim: numpy trainer" in outcome.logs["n2"], outcome.logs["n2"][-3000:]


def test_unregistered_node_is_refused(outcome):
    assert outcome.codes["rogue"] not in (0, None), outcome.logs["rogue"][-2000:]
    assert "Failed to activate SuperNode" in outcome.logs["rogue"]


def test_plaintext_node_cannot_connect(outcome):
    assert outcome.codes["plain"] not in (0, None), outcome.logs["plain"][-2000:]
    assert "UNAVAILABLE" in outcome.logs["plain"] or "Socket closed" in outcome.logs["plain"]
