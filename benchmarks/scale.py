"""How the simulation scales: the pool backend beside the in-process one and Flower's engine.

Every measurement runs in a fresh process (so Ray's start-up and the imports count), and
the parent samples the resident memory of that process and all its descendants (Ray's
GCS, raylet, workers) every 0.2 s. Printed per row:

- ``start s``: from the ``simulate`` call to the start of round 1 (Ray, workers ready,
  data, the server's first evaluation; Flower's engine also runs its discovery round);
- ``s/round``: median wall seconds of rounds 2..R (round 1 warms caches);
- ``train s/round``: the clients' own training time, summed over a round's clients
  (``train-s``, measured inside the client), median;
- ``overhead ms/client``: ``(s/round * workers - train s/round) / clients a round``: what
  a client costs beyond its training (messages, serialisation, encoding, idle workers);
- ``total s``: the whole call, start-up included; ``acc``: final test accuracy;
- ``peak RSS GiB``: of the whole process tree (shared pages are counted once per process,
  so this over-states Ray's shared object store).

Parts (``--part``):

- ``lr``: FLUTE's LR_MNIST task (logistic regression, 1,000 clients, 10 a round, batch 10,
  SGD lr 0.03, 1 epoch, 100 rounds) on Fashion-MNIST when its IDX files are installed
  (``make data``), else MNIST-5k, IID; on ``pool``, ``inprocess`` and ``flower``;
- ``scale``: 1,000 / 10,000 / 100,000 clients, 100 a round: logistic regression on
  Synthetic(1, 1), then with DGC's per-client state (``state_memory_mb: 512``); and the
  CNN on MNIST-5k at 1,000 clients, pool beside in-process;
- ``cpr``: logistic regression on Synthetic(1, 1), 10,000 clients, 10 to 500 a round.

    python benchmarks/scale.py --part lr          # ~2 min on 2 cores
    python benchmarks/scale.py --part scale       # ~10 min
    python benchmarks/scale.py --part cpr
    python benchmarks/scale.py --child '{...}'    # one measurement (used by the parent)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["output.progress=false", "output.plots=false", "simulation.round_timeout=3600"]


# --------------------------------------------------------------------------- the child


class TimedGrid:
    """Any grid, with each round's wall time and the clients' summed ``train-s`` recorded."""

    def __init__(self, grid: Any) -> None:
        self._grid = grid
        self.rounds: list[tuple[float, float, int]] = []  # (wall s, sum of train-s, replies)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        t0 = time.perf_counter()
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        wall = time.perf_counter() - t0
        train = 0.0
        for r in replies:
            if not r.has_error() and "metrics" in r.content.metric_records:
                train += float(r.content.metric_records["metrics"].get("train-s", 0.0))
        if replies and any(r.metadata.message_type == "train" for r in replies):
            self.rounds.append((wall, train, len(replies)))
        return replies


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration; return its figures."""
    from fedsim.config import load_config
    from fedsim.engine.server import run_server
    from fedsim.engine.simulation import quiet_environment

    cfg = load_config(spec.get("config"), COMMON + spec["set"])
    run_dir = Path(tempfile.mkdtemp(prefix="fedsim-scale-"))
    quiet_environment(run_dir)
    marks: list[float] = []
    progress = lambda row: marks.append(time.perf_counter())  # noqa: E731
    backend = cfg.simulation.backend
    t_call = time.perf_counter()
    timed: TimedGrid
    workers = 1
    if backend == "inprocess":
        from fedsim.clients.app import app
        from fedsim.engine.inprocess import InProcessGrid

        timed = TimedGrid(InProcessGrid(app, cfg.data.num_clients))
        # TimedGrid is no Grid subclass: a proxy, the rest of Grid reaches the grid through __getattr__
        summary = run_server(timed, cfg, run_dir, progress)  # type: ignore[arg-type]
    elif backend == "pool":
        import ray

        from fedsim.engine.pool import PoolGrid

        grid = PoolGrid(cfg, run_dir, say=lambda s: None)
        workers = grid.workers_n
        timed = TimedGrid(grid)
        try:
            summary = run_server(timed, cfg, run_dir, progress)  # type: ignore[arg-type]  # a proxy, as above
        finally:
            grid.shutdown()
            ray.shutdown()
    else:
        from flwr.serverapp import ServerApp
        from flwr.simulation import run_simulation

        from fedsim.clients.app import app as client_app
        from fedsim.engine.simulation import backend_config

        out: dict[str, Any] = {}
        server_app = ServerApp()

        @server_app.main()
        def main(grid: Any, context: Any) -> None:
            out["timed"] = TimedGrid(grid)
            out["summary"] = run_server(out["timed"], cfg, run_dir, progress)

        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=cfg.data.num_clients,
                       backend_config=backend_config(cfg))
        timed, summary = out["timed"], out["summary"]
        workers = int(os.cpu_count() or 1)
    total = time.perf_counter() - t_call
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    loop_start = marks[0] - rows[1]["wall_time"]
    steady = timed.rounds[1:] or timed.rounds
    s_round = statistics.median(w for w, _, _ in steady)
    train = statistics.median(t for _, t, _ in steady)
    per_round = statistics.median(n for _, _, n in steady)
    return {"start_s": loop_start - t_call, "s_round": s_round, "train_s_round": train,
            "overhead_ms": 1e3 * (s_round * workers - train) / max(per_round, 1), "workers": workers,
            "total_s": total, "acc": summary["final_accuracy"], "rounds": summary["rounds"]}


# --------------------------------------------------------------------------- the parent


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def measure(label: str, overrides: list[str], config: str | None = None, timeout: float = 3600) -> dict[str, Any]:
    spec = json.dumps({"set": overrides, "config": config})
    proc = subprocess.Popen([sys.executable, __file__, "--child", spec], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(proc.pid))
            done.wait(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
    done.set()
    t.join()
    if proc.returncode != 0 or not out.strip():
        print(f"{label}: failed (exit {proc.returncode})\n{err[-3000:]}", file=sys.stderr)
        return {"label": label, "failed": True}
    res = json.loads(out.strip().splitlines()[-1])
    res.update(label=label, peak_gib=peak[0] / 2**30)
    print(f"  {label}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in res.items() if k != "label"), file=sys.stderr, flush=True)
    return res


def table(title: str, rows: list[dict[str, Any]]) -> None:
    cols = [("label", "run", "{}"), ("workers", "workers", "{}"), ("start_s", "start s", "{:.1f}"),
            ("s_round", "s/round", "{:.3f}"), ("train_s_round", "train s/round", "{:.3f}"),
            ("overhead_ms", "overhead ms/client", "{:.2f}"), ("total_s", "total s", "{:.1f}"),
            ("acc", "acc", "{:.3f}"), ("peak_gib", "peak RSS GiB", "{:.2f}")]
    print(f"\n{title}")
    print("| " + " | ".join(h for _, h, _ in cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        if r.get("failed"):
            print(f"| {r['label']} | failed |" + " |" * (len(cols) - 2))
            continue
        print("| " + " | ".join(fmt.format(r[k]) for k, _, fmt in cols) + " |")


def load_line() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f", {os.cpu_count()} CPUs"


def fashion_available() -> bool:
    try:
        from fedsim.data.datasets import FASHION_MNIST_DIRS
    except ImportError:
        return False
    return any(Path(d).is_dir() for d in FASHION_MNIST_DIRS)


def part_lr(args: argparse.Namespace) -> None:
    data = "fashion-mnist" if fashion_available() else "mnist5k"
    base = ["name=lr", f"data.name={data}", "data.num_clients=1000", "data.partition.kind=iid",
            "clients_per_round=10", f"rounds={args.rounds or 100}", "model.name=logreg", "train.lr=0.03",
            "train.batch_size=10", "train.local_epochs=1", "train.momentum=0"]
    rows = [measure(f"{b}", base + [f"simulation.backend={b}"]) for b in args.backends]
    table(f"FLUTE's LR task on {data} (1,000 clients, 10 a round, {args.rounds or 100} rounds); {load_line()}",
          rows)


def part_scale(args: argparse.Namespace) -> None:
    rounds = args.rounds or 5
    syn = ["name=scale", "data.name=synthetic", "data.params={alpha: 1, beta: 1}", "data.partition.kind=natural",
           "clients_per_round=100", f"rounds={rounds}", f"eval_every={rounds}", "model.name=logreg",
           "train.lr=0.01", "train.batch_size=10", "train.momentum=0"]
    rows = []
    for n in args.clients:
        rows.append(measure(f"logreg {n:,} pool", syn + [f"data.num_clients={n}", "simulation.backend=pool"]))
    for n in args.clients:
        rows.append(measure(f"logreg+dgc {n:,} pool", syn + [
            f"data.num_clients={n}", "simulation.backend=pool", "simulation.state_memory_mb=512",
            "codec={name: dgc, params: {density: 0.01}}"]))
    cnn = ["name=scale-cnn", "data.name=mnist5k", "data.num_clients=1000", "data.partition.kind=iid",
           "clients_per_round=100", f"rounds={rounds}", f"eval_every={rounds}", "model.name=cnn",
           "train.batch_size=16", "train.local_epochs=1"]
    for b in ("pool", "inprocess"):
        rows.append(measure(f"cnn 1,000 {b}", cnn + [f"simulation.backend={b}"]))
    table(f"Scale: 100 clients a round, {rounds} rounds; {load_line()}", rows)


def part_cpr(args: argparse.Namespace) -> None:
    rounds = args.rounds or 5
    base = ["name=cpr", "data.name=synthetic", "data.params={alpha: 1, beta: 1}", "data.partition.kind=natural",
            "data.num_clients=10000", f"rounds={rounds}", f"eval_every={rounds}", "model.name=logreg",
            "train.lr=0.01", "train.batch_size=10", "train.momentum=0", "simulation.backend=pool"]
    rows = [measure(f"{k} a round", base + [f"clients_per_round={k}"]) for k in (10, 50, 100, 200, 500)]
    table(f"Cost as clients per round grow (Synthetic(1,1), 10,000 clients, pool); {load_line()}", rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["lr", "scale", "cpr", "all"], default="lr")
    ap.add_argument("--backends", default="pool,inprocess,flower", type=lambda s: s.split(","))
    ap.add_argument("--clients", default="1000,10000,100000", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--rounds", type=int, default=None, help="rounds per run (default: the part's)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return
    print(f"# benchmarks/scale.py --part {args.part}; {load_line()}", flush=True)
    parts = {"lr": part_lr, "scale": part_scale, "cpr": part_cpr}
    for name in (parts if args.part == "all" else [args.part]):
        parts[name](args)


if __name__ == "__main__":
    main()
