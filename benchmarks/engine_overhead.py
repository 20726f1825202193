"""fedsim's per-round overhead over bare Flower, measured side by side.

Both runs use Flower's simulation engine on Ray with the same model, data partitions,
number of clients, clients per round, local training and server-side evaluation:

- ``bare``: Flower's ``FedAvg.start`` with a minimal ClientApp that trains and returns
  its weights;
- ``fedsim``: ``fedsim run``'s engine (seeded sampling, fresh per-client messages,
  identity codec, payload validation and decoding, byte accounting, metrics files).

A round's time is the gap between two consecutive server-side evaluations; round 1
(actor start-up) is left out. Each mode runs in its own process, alternating, and the
table gives the medians and the ratio fedsim / bare (goal: <= 1.10).

    python benchmarks/engine_overhead.py [--rounds 15] [--repeats 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE = ["name=overhead", "rounds=15", "output.progress=false", "output.plots=false"]


def cfg_from(overrides: list[str]):
    from fedsim.config import load_config

    return load_config(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml", BASE + overrides)


def run_bare(overrides: list[str]) -> list[float]:
    """Bare Flower: FedAvg.start, a minimal ClientApp; returns evaluation timestamps."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from fedsim.engine.simulation import backend_config, quiet_environment

    cfg = cfg_from(overrides)
    quiet_environment(Path(tempfile.mkdtemp()))
    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        from fedsim.clients import torch_trainer as tt
        from fedsim.data.datasets import load_dataset, load_partition
        from fedsim.models import build_model

        tt.one_thread()
        ds = load_dataset(cfg.data, cfg.seed)
        pid = int(context.node_config["partition-id"])
        x, y = load_partition(cfg.data, cfg.seed, pid)
        model = build_model(cfg.model.name, cfg.model.params, ds.input_shape, ds.num_classes, 0)
        tt.set_weights(model, msg.content["arrays"].to_numpy_ndarrays())
        t = cfg.train
        m = tt.train(model, x, y, epochs=t.local_epochs, batch_size=t.batch_size, lr=t.lr,
                     momentum=t.momentum, weight_decay=t.weight_decay, seed=pid)
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                   "metrics": MetricRecord({"num-examples": int(m["num-examples"])})}), reply_to=msg)

    stamps: list[float] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        from fedsim.engine.server import Evaluator

        ev = Evaluator(cfg)
        n = cfg.data.num_clients
        strategy = FedAvg(fraction_train=cfg.clients_per_round / n, fraction_evaluate=0.0,
                          min_available_nodes=n, min_train_nodes=cfg.clients_per_round)

        def evaluate(rnd: int, arrays: ArrayRecord) -> MetricRecord:
            loss, acc = ev(arrays)
            stamps.append(time.perf_counter())
            return MetricRecord({"loss": loss, "accuracy": acc})

        strategy.start(grid, ev.initial_arrays(), num_rounds=cfg.rounds, evaluate_fn=evaluate)

    run_simulation(server_app=server, client_app=client, num_supernodes=cfg.data.num_clients,
                   backend_config=backend_config(cfg))
    return stamps


def run_fedsim(overrides: list[str]) -> list[float]:
    """fedsim's engine; returns the wall-clock time of each round's row."""
    from fedsim.engine.simulation import simulate
    from fedsim.metrics import read_rows

    cfg = cfg_from(overrides)
    run_dir = Path(tempfile.mkdtemp(prefix="fedsim-overhead-"))
    simulate(cfg, run_dir)
    return [r["wall_time"] for r in read_rows(run_dir)[1:]]


def round_times(stamps: list[float]) -> list[float]:
    """Gaps between consecutive round ends, round 1 (actor start-up) left out."""
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return gaps[1:] if len(gaps) > 2 else gaps


def child(mode: str, overrides: list[str]) -> None:
    # bare: evaluation stamps of rounds 0..R; fedsim: seconds from round 1's start to each round's end
    stamps = run_bare(overrides) if mode == "bare" else [0.0] + run_fedsim(overrides)
    print("RESULT " + json.dumps(round_times(stamps)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--child", choices=["bare", "fedsim"])
    args = ap.parse_args()
    overrides = [f"rounds={args.rounds}"] + args.overrides
    if args.child:
        child(args.child, overrides)
        return
    times: dict[str, list[float]] = {"bare": [], "fedsim": []}
    for rep in range(args.repeats):
        for mode in ("bare", "fedsim"):
            cmd = [sys.executable, __file__, "--child", mode, "--rounds", str(args.rounds)]
            for o in args.overrides:
                cmd += ["--set", o]
            out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
            line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{mode} run failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
            got = json.loads(line[7:])
            times[mode] += got
            print(f"repeat {rep + 1}: {mode:6s} median round {statistics.median(got) * 1000:7.1f} ms "
                  f"over {len(got)} rounds", flush=True)
    cfg = cfg_from(overrides)
    b, f = statistics.median(times["bare"]), statistics.median(times["fedsim"])
    print()
    print(f"config: quickstart ({cfg.data.name}, {cfg.model.name}), {cfg.data.num_clients} clients, "
          f"{cfg.clients_per_round} per round, {cfg.rounds} rounds x {args.repeats} repeats, {os.cpu_count()} cores")
    print(f"| engine | median round (ms) | rounds measured |")
    print(f"|---|---|---|")
    print(f"| bare Flower FedAvg | {b * 1000:.1f} | {len(times['bare'])} |")
    print(f"| fedsim FedAvg | {f * 1000:.1f} | {len(times['fedsim'])} |")
    print(f"ratio fedsim / bare: {f / b:.3f} (goal <= 1.10)")


if __name__ == "__main__":
    main()
