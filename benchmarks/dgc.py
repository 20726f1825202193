"""Deep Gradient Compression end to end: dense FedAvg vs DGC at density 0.001, and ablations.

Lin et al., "Deep Gradient Compression", ICLR 2018 (ALGORITHMS.md sec. 1; issue 4,
benchmark 2). Runs, on the in-process backend (the real ClientApp and server loop, no
Ray start-up; same results as Ray):

- ``dense``: ``configs/dgc_dense_baseline.yaml`` (FedAvg, identity codec);
- ``dgc``: ``configs/dgc_mnist.yaml`` (DGC, density 0.001, all four techniques);
- ``dgc -momentum corr.``: ``momentum_correction: false`` (raw update accumulated);
- ``dgc -masking``: ``momentum_masking: false``;
- ``dgc -warm-up``: ``warmup_rounds: 0`` (density 0.001 from the first round);
- with ``--dgc-rounds R2`` (R2 > --rounds), also ``dgc xR2``: DGC for R2 rounds, its bytes
  compared with the dense run's over --rounds (the paper's remedy: train longer).

and prints one table: final and best test accuracy, the accuracy gap to dense in points,
total uplink MB, the total uplink ratio dense / run (goal >= 270x, the paper's low end),
and the mean uplink bytes per client in the last round (after warm-up). The goals line
says which runs meet both goals (ratio >= 270x and final accuracy within 1 point).

On MNIST-5k by default; Fashion-MNIST (Debian's ``dataset-fashion-mnist`` IDX files) with
``--data fashion-mnist`` when it is installed (``--data auto`` picks it if present).

Usage: ``python benchmarks/dgc.py [--rounds 40] [--dgc-rounds 0] [--data auto] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DENSE_CFG = ROOT / "configs" / "dgc_dense_baseline.yaml"
DGC_CFG = ROOT / "configs" / "dgc_mnist.yaml"
RATIO_GOAL = 270.0
ACC_GOAL_POINTS = 1.0


def runs(dgc_rounds: int, rounds: int) -> list[tuple[str, Path, list[str]]]:
    """(label, config, overrides) of every run in the table."""
    out = [
        ("dense FedAvg", DENSE_CFG, []),
        ("dgc", DGC_CFG, []),
        ("dgc -momentum corr.", DGC_CFG, ["codec.params.momentum_correction=false"]),
        ("dgc -masking", DGC_CFG, ["codec.params.momentum_masking=false"]),
        ("dgc -warm-up", DGC_CFG, ["codec.params.warmup_rounds=0"]),
    ]
    if dgc_rounds > rounds:
        out.append((f"dgc x{dgc_rounds} rounds", DGC_CFG, [f"rounds={dgc_rounds}"]))
    return out


def data_overrides(choice: str) -> list[str]:
    from fedsim.data.datasets import FASHION_MNIST_DIRS

    have_fashion = any(Path(d).is_dir() for d in FASHION_MNIST_DIRS)
    if choice == "fashion-mnist" or (choice == "auto" and have_fashion):
        return ["data.name=fashion-mnist"]
    return []


def run_one(config: Path, overrides: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from fedsim.config import check_plugins, load_config
    from fedsim.engine.simulation import simulate
    from fedsim.metrics import read_rows

    cfg = load_config(config, ["simulation.backend=inprocess", "output.progress=false",
                               "output.plots=false", *overrides])
    check_plugins(cfg)
    with tempfile.TemporaryDirectory() as d:
        summary = simulate(cfg, Path(d))
        rows = read_rows(d)
    return summary, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=40, help="rounds of every run (default 40)")
    ap.add_argument("--dgc-rounds", type=int, default=0,
                    help="also run DGC for this many rounds (> --rounds) against dense over --rounds")
    ap.add_argument("--data", choices=("auto", "mnist5k", "fashion-mnist"), default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=5, help="server-side evaluation every k rounds (and the last)")
    args = ap.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)

    common = [f"rounds={args.rounds}", f"seed={args.seed}", f"eval_every={args.eval_every}",
              *data_overrides(args.data)]
    results = []
    for label, config, extra in runs(args.dgc_rounds, args.rounds):
        t0 = time.perf_counter()
        summary, rows = run_one(config, common + extra)
        last = rows[-1]
        per_client_last = last["bytes_up"] / max(last["replied"], 1)
        results.append((label, summary, per_client_last, time.perf_counter() - t0))

    dense = results[0][1]
    dataset = (data_overrides(args.data) or ["data.name=mnist5k"])[0].split("=")[1]
    print(f"\nDGC vs dense FedAvg: {dataset}, CNN, {args.rounds} rounds (seed {args.seed}); "
          f"configs {DGC_CFG.relative_to(ROOT)}, {DENSE_CFG.relative_to(ROOT)}")
    head = (f"{'run':<22}{'rounds':>7}{'final acc':>10}{'best acc':>9}{'gap pts':>8}"
            f"{'uplink MB':>11}{'ratio':>8}{'B/client last':>14}{'wall s':>8}")
    print(head)
    print("-" * len(head))
    met = []
    for label, s, per_client, wall in results:
        gap = 100.0 * (dense["final_accuracy"] - s["final_accuracy"])
        ratio = dense["total_bytes_up"] / s["total_bytes_up"]
        print(f"{label:<22}{s['rounds']:>7}{s['final_accuracy']:>10.4f}{s['best_accuracy']:>9.4f}{gap:>8.2f}"
              f"{s['total_bytes_up'] / 1e6:>11.3f}{ratio:>7.1f}x{per_client:>14,.0f}{wall:>8.1f}")
        if label != "dense FedAvg" and ratio >= RATIO_GOAL and gap <= ACC_GOAL_POINTS:
            met.append(label)
    print(f"goals: total uplink ratio >= {RATIO_GOAL:.0f}x and final accuracy within {ACC_GOAL_POINTS:.0f} "
          f"point of dense: {'met by ' + ', '.join(met) if met else 'not met by any DGC run'}")


if __name__ == "__main__":
    main()
