"""Deep Gradient Compression end to end: dense FedAvg vs DGC at density 0.001, and ablations.

Lin et al., "Deep Gradient Compression", ICLR 2018 (ALGORITHMS.md sec. 1; issue 4,
benchmark 2; issue 14, item 3). Runs, on the in-process backend (the real ClientApp and
server loop, no Ray start-up; same results as Ray), one of two workloads:

- ``--workload mnist5k`` (default): the small CNN (28,938 parameters) on MNIST-5k,
  ``configs/dgc_dense_baseline.yaml`` (FedAvg, identity codec) against
  ``configs/dgc_mnist.yaml`` (DGC, density 0.001, all four techniques), 40 rounds;
- ``--workload fashion-cnn``: McMahan et al.'s FedAvg CNN (1,663,370 parameters) on a
  15,000/2,000 subset of Fashion-MNIST (MNIST-5k where Fashion-MNIST is not installed;
  the table says which), ``configs/fashion_cnn_dense.yaml`` against
  ``configs/fashion_cnn_dgc.yaml`` (the paper's warm-up 0.25 -> 0.001 over 4 rounds,
  momentum correction, masking, clipping), 120 rounds (benchmarks/fashion_cnn.py).

With ``--ablations`` (on by default for mnist5k) also ``dgc -momentum corr.``
(``momentum_correction: false``), ``dgc -masking`` (``momentum_masking: false``) and
``dgc -warm-up`` (``warmup_rounds: 0``); with ``--dgc-rounds R2`` (R2 > --rounds) also
``dgc xR2``: DGC for R2 rounds, its bytes compared with the dense run's over --rounds;
with ``--densities D ... [--density-rounds R3]`` also DGC at those densities for R3
rounds, compared with dense after R3 rounds (a run's first rounds do not depend on its
length).

Prints one table: final and best test accuracy, the gap to dense in points, total uplink
MB, the **total** uplink ratio (dense total / the run's total, warm-up included) and the
**steady** ratio (a client's dense update / its DGC payload in the last round, after
warm-up: the per-iteration "gradient size" ratio that Lin et al.'s tables report), and
the goals line: which runs reach 270x (the paper's low end) by each measure with final
accuracy within 1 point of dense. Every run's per-round metrics stay in
``runs/bench/<name>-<config hash>/`` (metrics.jsonl, clients.jsonl, summary.json); a
rerun with the same settings reads them back instead of training again.

Usage: ``python benchmarks/dgc.py [--workload mnist5k|fashion-cnn] [--rounds R]
[--dgc-rounds 0] [--ablations] [--data auto] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fashion_cnn import DENSE_CFG, DGC_CFG, ROOT, Run, codec_label, describe, run_cached, workload

MNIST_DENSE_CFG = ROOT / "configs" / "dgc_dense_baseline.yaml"
MNIST_DGC_CFG = ROOT / "configs" / "dgc_mnist.yaml"
RATIO_GOAL = 270.0
ACC_GOAL_POINTS = 1.0
ABLATIONS = (
    ("dgc -momentum corr.", "codec.params.momentum_correction=false"),
    ("dgc -masking", "codec.params.momentum_masking=false"),
    ("dgc -warm-up", "codec.params.warmup_rounds=0"),
)


def runs(dense: Path, dgc: Path, dgc_rounds: int, rounds: int, ablations: bool,
         densities: tuple[float, ...] = (), density_rounds: int = 0) -> list[tuple[str, Path, list[str]]]:
    """(label, config, overrides) of every run in the table."""
    out: list[tuple[str, Path, list[str]]] = [("dense FedAvg", dense, []), ("dgc", dgc, [])]
    if ablations:
        out += [(label, dgc, [override]) for label, override in ABLATIONS]
    if dgc_rounds > rounds:
        out.append((f"dgc x{dgc_rounds} rounds", dgc, [f"rounds={dgc_rounds}"]))
    n = density_rounds or rounds
    out += [(f"dgc density {d:g}", dgc, [f"rounds={n}", f"codec.params.density={d}"]) for d in densities]
    return out


def dense_at(dense: Run, rounds: int) -> tuple[float, float]:
    """(test accuracy, total uplink bytes) of the dense run after ``rounds`` rounds.

    A run's first R rounds do not depend on how many rounds it has (sampling, training and
    the network model are drawn from (seed, round, client)), so a DGC run shorter than the
    dense run is compared with the dense run's round R, not with its end.
    """
    if rounds >= dense.summary["rounds"]:
        return float(dense.summary["final_accuracy"]), float(dense.summary["total_bytes_up"])
    row = next(r for r in dense.rows if r["round"] == rounds)
    if row.get("test_accuracy") is None:
        raise ValueError(f"the dense run has no evaluation at round {rounds}; set eval_every to divide it")
    return float(row["test_accuracy"]), float(row["cum_bytes_up"])


def per_client_last(run: Run) -> float:
    """Mean uplink bytes a replying client sent in the run's last round."""
    last = run.rows[-1]
    return float(last["bytes_up"]) / max(int(last["replied"]), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", choices=("mnist5k", "fashion-cnn"), default="mnist5k")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds of every run (default 40 mnist5k, 120 fashion-cnn)")
    ap.add_argument("--dgc-rounds", type=int, default=0,
                    help="also run DGC for this many rounds (> --rounds) against dense over --rounds")
    ap.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=None,
                    help="also run DGC without each technique (default: on for mnist5k, off for fashion-cnn)")
    ap.add_argument("--data", choices=("auto", "mnist5k", "fashion-mnist"), default="auto",
                    help="fashion-cnn's dataset: Fashion-MNIST where installed (auto), or force one")
    ap.add_argument("--densities", type=float, nargs="*", default=[],
                    help="also run DGC at these densities (the closest settings to the goals)")
    ap.add_argument("--density-rounds", type=int, default=0,
                    help="rounds of the --densities runs (default --rounds), compared with dense at that round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=None,
                    help="server-side evaluation every k rounds (default: the config's)")
    args = ap.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)

    fashion = args.workload == "fashion-cnn"
    rounds = args.rounds or (120 if fashion else 40)
    ablations = (not fashion) if args.ablations is None else args.ablations
    if fashion:
        w = workload(args.data)
        dataset, data_sets, dense_cfg, dgc_cfg = w.dataset, list(w.overrides), DENSE_CFG, DGC_CFG
    else:
        dataset, data_sets, dense_cfg, dgc_cfg = "MNIST-5k", [], MNIST_DENSE_CFG, MNIST_DGC_CFG
    common = [f"rounds={rounds}", f"seed={args.seed}", *data_sets]
    if args.eval_every:
        common.append(f"eval_every={args.eval_every}")
    results = [(label, run_cached(config, common + extra))
               for label, config, extra in runs(dense_cfg, dgc_cfg, args.dgc_rounds, rounds, ablations,
                                                tuple(args.densities), args.density_rounds)]

    dense = results[0][1]
    dense_client = per_client_last(dense)
    print(f"\nDGC vs dense FedAvg, {rounds} rounds: {describe(dense.cfg, dataset)}")
    print(f"configs {dgc_cfg.relative_to(ROOT)}, {dense_cfg.relative_to(ROOT)}; raw metrics in "
          f"{dense.run_dir.parent.relative_to(ROOT)}/")
    head = (f"{'run':<22}{'rounds':>7}{'final acc':>10}{'best acc':>9}{'gap pts':>8}{'uplink MB':>11}"
            f"{'total ratio':>12}{'steady ratio':>13}{'B/client last':>14}  codec")
    print(head)
    print("-" * (len(head) + 40))
    met: dict[str, list[str]] = {"total": [], "steady": []}
    for label, r in results:
        s = r.summary
        dense_acc, dense_total = dense_at(dense, min(s["rounds"], rounds))
        gap = 100.0 * (dense_acc - s["final_accuracy"])
        total = dense_total / s["total_bytes_up"]
        steady = dense_client / per_client_last(r)
        print(f"{label:<22}{s['rounds']:>7}{s['final_accuracy']:>10.4f}{s['best_accuracy']:>9.4f}{gap:>8.2f}"
              f"{s['total_bytes_up'] / 1e6:>11.3f}{total:>11.1f}x{steady:>12.1f}x{per_client_last(r):>14,.0f}"
              f"  {codec_label(r.cfg)}")
        if label != "dense FedAvg" and gap <= ACC_GOAL_POINTS:
            met["total"] += [label] if total >= RATIO_GOAL else []
            met["steady"] += [label] if steady >= RATIO_GOAL else []
    print("(gap and total ratio against dense after as many rounds as the run, at most the dense run's: total ratio "
          "= dense uplink / the run's, warm-up included; steady ratio = a client's dense update / its payload in the "
          "last round, the paper's per-iteration measure)")
    for kind, labels in met.items():
        print(f"goals ({kind} ratio): >= {RATIO_GOAL:.0f}x and final accuracy within {ACC_GOAL_POINTS:.0f} point "
              f"of dense: {'met by ' + ', '.join(labels) if labels else 'not met by any DGC run'}")


if __name__ == "__main__":
    main()
