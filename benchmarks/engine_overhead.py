"""fedsim's per-round overhead over bare Flower, measured side by side.

Both runs train the same clients with the same seeds each round, on the same model, data
partitions, local training and server-side evaluation:

- ``bare``: Flower's ``FedAvg.start`` on Flower's simulation engine, with a minimal ClientApp
  that trains and returns its weights. Flower samples nodes from the unseeded global
  ``random``, so its ``configure_train`` is replaced by one that sends each round's
  messages to fedsim's seeded sample of client ids (:func:`fedsim.engine.wrapper.sample_clients`),
  each node training the client named in its message with fedsim's training seed;
- ``fedsim``: ``fedsim run``'s engine (its configured backend; seeded sampling, fresh
  per-client messages, identity codec, payload validation and decoding, byte accounting,
  metrics files).

The final accuracies of the two are printed: equal, they show the work was the same.
A round's time is the gap between two consecutive server-side evaluations; round 1
(actor start-up) is left out. Each mode runs in its own process, alternating; each repeat
gives a ratio of medians fedsim / bare, and the table gives the median ratio over the
repeats with its range (goal: <= 1.10).

    python benchmarks/engine_overhead.py [--rounds 15] [--repeats 3] [--set key=value ...]
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

# the quickstart's codec and network model off: bare Flower has neither
BASE = ["name=overhead", "rounds=15", "output.progress=false", "output.plots=false",
        "codec={name: identity}", "network=null"]


def cfg_from(overrides: list[str]):
    from fedsim.config import load_config

    return load_config(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml", BASE + overrides)


def train_seed(seed: int, rnd: int, client: int) -> int:
    """The training seed fedsim's client derives from (run seed, round, client)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, rnd, client]).generate_state(1)[0])


def run_bare(overrides: list[str]) -> tuple[list[float], float]:
    """Bare Flower: FedAvg.start, a minimal ClientApp; returns evaluation timestamps and the final accuracy."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from fedsim.engine.simulation import backend_config, quiet_environment
    from fedsim.engine.wrapper import sample_clients

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
        conf = msg.content.config_records["config"]
        pid, rnd = conf["client"], conf["server-round"]  # the client the server sampled
        assert isinstance(pid, int) and isinstance(rnd, int)  # as the server below sets them
        x, y = load_partition(cfg.data, cfg.seed, pid)
        model = build_model(cfg.model.name, cfg.model.params, ds.input_shape, ds.num_classes, 0)
        tt.set_weights(model, msg.content.array_records["arrays"].to_numpy_ndarrays())
        t = cfg.train
        m = tt.train(model, x, y, epochs=t.local_epochs, batch_size=t.batch_size, lr=t.lr,
                     momentum=t.momentum, weight_decay=t.weight_decay, seed=train_seed(cfg.seed, rnd, pid))
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                   "metrics": MetricRecord({"num-examples": int(m["num-examples"])})}), reply_to=msg)

    class SameSample(FedAvg):
        """FedAvg training fedsim's seeded sample of client ids, one node per sampled client."""

        def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                            grid: Grid) -> list[Message]:
            n = cfg.data.num_clients
            clients = sample_clients(cfg.seed, server_round, list(range(n)), cfg.clients_per_round)
            nodes = sorted(grid.get_node_ids())[:len(clients)]
            return [Message(RecordDict({"arrays": arrays,
                                        "config": ConfigRecord({"server-round": server_round, "client": c})}),
                            message_type=MessageType.TRAIN, dst_node_id=node) for node, c in zip(nodes, clients)]

    stamps: list[float] = []
    accuracy: list[float] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        from fedsim.engine.server import Evaluator

        ev = Evaluator(cfg)
        n = cfg.data.num_clients
        strategy = SameSample(fraction_train=cfg.clients_per_round / n, fraction_evaluate=0.0,
                              min_available_nodes=n, min_train_nodes=cfg.clients_per_round)

        def evaluate(rnd: int, arrays: ArrayRecord) -> MetricRecord:
            loss, acc = ev(arrays)
            stamps.append(time.perf_counter())
            accuracy.append(acc)
            return MetricRecord({"loss": loss, "accuracy": acc})

        strategy.start(grid, ev.initial_arrays(), num_rounds=cfg.rounds, evaluate_fn=evaluate)

    run_simulation(server_app=server, client_app=client, num_supernodes=cfg.data.num_clients,
                   backend_config=backend_config(cfg))
    return stamps, accuracy[-1]


def run_fedsim(overrides: list[str]) -> tuple[list[float], float]:
    """fedsim's engine; returns the wall-clock time of each round's row and the final accuracy."""
    from fedsim.engine.simulation import simulate
    from fedsim.metrics import read_rows

    cfg = cfg_from(overrides)
    run_dir = Path(tempfile.mkdtemp(prefix="fedsim-overhead-"))
    summary = simulate(cfg, run_dir)
    return [r["wall_time"] for r in read_rows(run_dir)[1:]], summary["final_accuracy"]


def round_times(stamps: list[float]) -> list[float]:
    """Gaps between consecutive round ends, round 1 (actor start-up) left out."""
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return gaps[1:] if len(gaps) > 2 else gaps


def child(mode: str, overrides: list[str]) -> None:
    # bare: evaluation stamps of rounds 0..R; fedsim: seconds from round 1's start to each round's end
    if mode == "bare":
        stamps, acc = run_bare(overrides)
    else:
        times, acc = run_fedsim(overrides)
        stamps = [0.0] + times
    print("RESULT " + json.dumps({"rounds": round_times(stamps), "accuracy": acc}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--child", choices=["bare", "fedsim"])
    args = ap.parse_args()
    overrides = [f"rounds={args.rounds}"] + args.overrides
    if args.child:
        child(args.child, overrides)
        return
    times: dict[str, list[float]] = {"bare": [], "fedsim": []}
    ratios, accuracy = [], {}
    for rep in range(args.repeats):
        medians = {}
        for mode in ("bare", "fedsim"):
            cmd = [sys.executable, __file__, "--child", mode, "--rounds", str(args.rounds)]
            for o in args.overrides:
                cmd += ["--set", o]
            out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
            line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{mode} run failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
            got = json.loads(line[7:])
            times[mode] += got["rounds"]
            medians[mode] = statistics.median(got["rounds"])
            accuracy[mode] = got["accuracy"]
            print(f"repeat {rep + 1}: {mode:6s} median round {medians[mode] * 1000:7.1f} ms "
                  f"over {len(got['rounds'])} rounds, final accuracy {got['accuracy']:.4f}", flush=True)
        ratios.append(medians["fedsim"] / medians["bare"])
    cfg = cfg_from(overrides)
    b, f = statistics.median(times["bare"]), statistics.median(times["fedsim"])
    print()
    print(f"config: quickstart ({cfg.data.name}, {cfg.model.name}, identity codec, no network model), "
          f"{cfg.data.num_clients} clients, {cfg.clients_per_round} per round "
          f"(the same seeded sample on both sides), {cfg.rounds} rounds x {args.repeats} repeats, "
          f"{os.cpu_count()} cores, fedsim backend {cfg.simulation.backend}")
    print("| engine | median round (ms) | rounds measured |")
    print("|---|---|---|")
    print(f"| bare Flower FedAvg | {b * 1000:.1f} | {len(times['bare'])} |")
    print(f"| fedsim FedAvg | {f * 1000:.1f} | {len(times['fedsim'])} |")
    print(f"ratio fedsim / bare (per repeat: {', '.join(f'{r:.3f}' for r in ratios)}): "
          f"median {statistics.median(ratios):.3f}, "
          f"range {min(ratios):.3f}-{max(ratios):.3f} (goal <= 1.10)")
    same = "yes" if abs(accuracy["bare"] - accuracy["fedsim"]) < 1e-9 else "NO"
    print(f"same final accuracy on both sides (same clients, same seeds): {same} "
          f"(bare {accuracy['bare']:.4f}, fedsim {accuracy['fedsim']:.4f})")


if __name__ == "__main__":
    main()
