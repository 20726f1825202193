"""The worker-pool backend: the same results as the other backends, failures, a Ray cluster."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import run_inprocess, small_config

from fedsim.engine.pool import PoolSetupError, assign, check_address, node_id

FEDSIM = [sys.executable, "-m", "fedsim.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- units


def test_assign_pins_owned_clients_and_balances_the_rest_largest_first():
    sizes = {0: 50, 1: 40, 2: 30, 3: 20, 4: 10, 5: 10}
    # client 5 is owned by worker 1 (it holds state there)
    out = assign(sizes, 2, lambda c: float(sizes[c]), owner={5: 1})
    # loads start [0, 10] (client 5 pinned); the rest, largest first, to the least loaded
    # worker (a tie goes to the lower index): 0 (50) -> w0 [50, 10]; 1 (40) -> w1 [50, 50];
    # 2 (30) -> w0 [80, 50]; 3 (20) -> w1 [80, 70]; 4 (10) -> w1 [80, 80]
    assert out == {5: 1, 0: 0, 1: 1, 2: 0, 3: 1, 4: 1}


def test_node_ids_are_not_client_ids():
    assert len({node_id(c) for c in range(1000)}) == 1000
    assert all(node_id(c) != c for c in range(1000))


def test_a_wrong_ray_address_fails_fast_with_one_line():
    t0 = time.monotonic()
    with pytest.raises(PoolSetupError, match=r"no Ray cluster at 127\.0\.0\.1:\d+") as info:
        check_address(f"127.0.0.1:{free_port()}")
    assert time.monotonic() - t0 < 10 and "\n" not in str(info.value)
    with pytest.raises(PoolSetupError, match="host:port"):
        check_address("nonsense")


# --------------------------------------------------------------------------- through Ray

@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    from fedsim.engine.simulation import quiet_environment

    quiet_environment(Path(os.environ.get("TMPDIR", "/tmp")))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]


STATEFUL = ["codec={name: topk, params: {density: 0.1, error_feedback: true}}", "data.num_clients=12",
            "clients_per_round=6", "rounds=3"]


@pytest.mark.e2e
def test_pool_equals_inprocess_and_flower_round_by_round(tmp_path, ray_local):
    """One seed, three backends: the pool and in-process rows are identical (same reply
    order, client state kept across rounds, spilled to disk by a tiny memory cap); Flower's
    engine gives the same counts and bytes, and losses/accuracies within float summation order."""
    from fedsim.engine.pool import PoolGrid
    from fedsim.engine.server import run_server

    cfg = small_config(*STATEFUL, "simulation.state_memory_mb=0.001")
    (tmp_path / "inproc").mkdir()
    run_inprocess(cfg, tmp_path / "inproc")
    (tmp_path / "pool").mkdir()
    grid = PoolGrid(cfg, tmp_path / "pool")
    try:
        run_server(grid, cfg, tmp_path / "pool")
        stats = grid.state_stats()
    finally:
        grid.shutdown()
    assert sum(s["spills"] for s in stats) > 0 and sum(s["restores"] for s in stats) > 0
    pool, inproc = rows_of(tmp_path / "pool"), rows_of(tmp_path / "inproc")
    assert comparable(pool) == comparable(inproc)
    # every client that trained holds error-feedback state on exactly one worker
    trained = {json.loads(l)["client"] for l in (tmp_path / "pool" / "clients.jsonl").read_text().splitlines()}
    assert sum(s["clients"] for s in stats) == len(trained)

    # Flower's own engine, as a user runs it, on the same config
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    args = ["run", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "fl"), "--set", "simulation.backend=flower",
            "--set", "name=flower", "--set", "output.plots=false"]
    res = subprocess.run(FEDSIM + args, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (fl_dir,) = (tmp_path / "fl").glob("flower-*")
    flower = rows_of(fl_dir)
    assert len(flower) == len(pool)
    for a, b in zip(flower, pool):
        for key, value in b.items():
            if key in ("wall_time", "cum_bytes_up", "cum_bytes_down") or value is None:
                continue
            if isinstance(value, float):
                assert a[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
            else:
                assert a[key] == value, key


@pytest.mark.e2e
def test_a_worker_killed_mid_round_fails_its_clients_and_the_run_goes_on(tmp_path, ray_local):
    from fedsim.engine.pool import PoolGrid
    from fedsim.engine.server import run_server

    cfg = small_config("data.num_clients=12", "clients_per_round=8", "rounds=4", "simulation.workers=2")
    grid = PoolGrid(cfg, tmp_path)
    killed = {}

    def kill_in_round_2(g: PoolGrid) -> None:
        if g.stats.rounds == 1 and not killed:  # round 2's batches are in flight
            killed["pid"] = g.pids[0]
            os.kill(g.pids[0], signal.SIGKILL)

    grid.on_dispatch = kill_in_round_2
    try:
        summary = run_server(grid, cfg, tmp_path)
        grid.refresh()
    finally:
        grid.shutdown()
    rows = rows_of(tmp_path)[1:]
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    assert rows[1]["failed"] > 0 and rows[1]["failed"] + rows[1]["replied"] == 8
    assert all(r["failed"] == 0 and r["replied"] == 8 for r in (rows[0], rows[2], rows[3]))
    failed = [json.loads(l) for l in (tmp_path / "clients.jsonl").read_text().splitlines()]
    failed = [c for c in failed if c["status"] == "failed"]
    assert failed and all(c["round"] == 2 and "worker 0 died" in c["reason"] for c in failed)
    assert summary["failed"] == rows[1]["failed"]
    assert grid.pids[0] != killed["pid"]  # restarted


# --------------------------------------------------------------------------- a Ray cluster


def start_node(args: list[str], tmp: Path, name: str) -> subprocess.Popen:
    """`ray start ... --block` as a child process: stopping it (by its pid) stops its node."""
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent))
    assert ray_bin, "the ray command is not installed"
    log = open(tmp / f"{name}.log", "w")
    return subprocess.Popen([ray_bin, "start", "--block", "--disable-usage-stats", *args], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_nodes(address: str, n: int, timeout: float = 90.0) -> None:
    code = (f"import ray,time,sys; ray.init(address='{address}', logging_level='ERROR', log_to_driver=False)\n"
            f"t=time.time()\nwhile len([x for x in ray.nodes() if x['Alive']]) < {n} and time.time()-t < {timeout}: "
            f"time.sleep(0.5)\nsys.exit(0 if len([x for x in ray.nodes() if x['Alive']]) >= {n} else 1)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout + 60)
    assert res.returncode == 0, res.stderr[-2000:]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.mark.e2e
def test_two_node_ray_cluster_runs_workers_on_both_nodes(tmp_path):
    """A head and a second node with `ray start` on 127.0.0.1 (own ports and temp dir); three
    rounds with one worker on each node, through `fedsim run` as a user starts it."""
    port = free_port()
    temp = Path("/tmp") / f"fedsim-ray-{os.getpid()}"  # Ray's socket paths must stay short
    ports = [str(free_port()) for _ in range(8)]
    head = start_node(["--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
                       f"--temp-dir={temp}", "--include-dashboard=false", f"--node-manager-port={ports[0]}",
                       f"--object-manager-port={ports[1]}", f"--ray-client-server-port={ports[2]}",
                       "--min-worker-port=21000", "--max-worker-port=21999"], tmp_path, "head")
    second = None
    try:
        address = f"127.0.0.1:{port}"
        wait_nodes(address, 1)
        second = start_node([f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                             f"--node-manager-port={ports[3]}", f"--object-manager-port={ports[4]}",
                             "--min-worker-port=22000", "--max-worker-port=22999"], tmp_path, "second")
        wait_nodes(address, 2)
        code = ("import json,sys; from pathlib import Path\n"
                "from tests.conftest import small_config\n"
                "from fedsim.engine.pool import PoolGrid\nfrom fedsim.engine.server import run_server\n"
                f"cfg = small_config('simulation.ray_address={address}', 'simulation.workers=2', 'rounds=3')\n"
                f"out = Path(r'{tmp_path}') / 'run'; out.mkdir()\n"
                "g = PoolGrid(cfg, out); s = run_server(g, cfg, out)\n"
                "print(json.dumps({'nodes': sorted(set(g.ray_nodes.values())), 'rounds': s['rounds'], "
                "'acc': s['final_accuracy']})); g.shutdown()\n")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                             cwd=Path(__file__).resolve().parents[1])
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
        got = json.loads(res.stdout.strip().splitlines()[-1])
        assert len(got["nodes"]) == 2 and got["rounds"] == 3 and got["acc"] > 0.3
    finally:
        if second is not None:
            stop(second)
        stop(head)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.e2e
def test_fedsim_run_with_a_wrong_ray_address_exits_2_with_one_line(tmp_path):
    args = ["run", "configs/quickstart.yaml", "--out", str(tmp_path), "--set", "data.name=digits",
            "--set", "data.num_clients=20", "--set", f"simulation.ray_address=127.0.0.1:{free_port()}",
            "--set", "model.name=mlp"]
    t0 = time.monotonic()
    res = subprocess.run(FEDSIM + args, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert time.monotonic() - t0 < 30
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "no Ray cluster at 127.0.0.1" in err[0] and "Traceback" not in res.stderr


def test_backend_defaults_to_pool_and_ray_is_an_alias_of_flower():
    assert small_config().simulation.backend == "pool"
    assert small_config("simulation.backend=ray").simulation.backend == "flower"
    from fedsim.config import ConfigError

    with pytest.raises(ConfigError, match="simulation.backend"):
        small_config("simulation.backend=threads")


def leaves_a_metric_record(msg, context):
    """A ClientApp (for the test below): client 0 replies but leaves a MetricRecord in its
    state; the others reply normally."""
    from flwr.app import Message as M
    from flwr.app import MetricRecord, RecordDict

    if context.node_config["partition-id"] == 0:
        context.state["bad"] = MetricRecord({"x": 1.0})
    return M(RecordDict(), reply_to=msg)


def test_a_client_whose_state_cannot_be_kept_fails_alone(tmp_path):
    """In a worker (called directly, no Ray), a client that leaves a MetricRecord in its
    state gets an error reply naming why; the next client of the batch runs normally."""
    from flwr.app import Message, RecordDict
    from flwr.common.serde import message_from_proto, message_to_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage
    from flwr.supercore.task_identity import TaskIdentity

    from fedsim.engine.pool import PoolWorker

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    worker = PoolWorker(0, 2, str(tmp_path / "s"), 1 << 20, None, client_app="test_pool:leaves_a_metric_record")
    batch = []
    for client in (0, 1):
        msg = Message(RecordDict(), dst_node_id=node_id(client), message_type="train")
        msg.metadata.__dict__["_message_id"] = f"m{client}"
        batch.append((client, message_to_proto(msg).SerializeToString(), []))
    (bad, bad_state, _), (good, good_state, _) = worker.run(batch)
    bad, good = (message_from_proto(ProtoMessage.FromString(b)) for b in (bad, good))
    assert bad.has_error() and "ArrayRecords only" in bad.error.reason and not bad_state
    assert not good.has_error() and not good_state
