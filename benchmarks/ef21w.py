"""EF21 vs EF21-W on the papers' problem with real data: rounds and bits to a tolerance.

Problem: logistic regression with the non-convex regulariser lam * sum x^2/(1+x^2),
lam = 0.1 (EF21, NeurIPS 2021; Error Feedback Reloaded, ICLR 2024), on MNIST-5k as a
binary task: digits 0-4 (+1) vs 5-9 (-1); pixels scaled to [0, 1] plus a bias (d = 785).

Methods, all with Top-k and the same multiplier on the theoretical step:
  EF21   / L_QM step   gamma = M / (L + L_QM sqrt(beta/theta))   (NeurIPS 2021, Thm 1)
  EF21   / L_AM step   gamma = M / (L + L_AM sqrt(beta/theta))   (ICLR 2024, improved EF21 theory)
  EF21-W / L_AM step   gamma = M / (L + L_AM sqrt(beta/theta))   (ICLR 2024, Thm 2)
L is taken as L_AM (an upper bound on f's constant). With Top-k (positively homogeneous)
the last two produce the same iterates; the fedsim problem's table shows it.

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
``sweep``: the gain against L_QM/L_AM. All 5000 samples split among ``--clients`` clients
  (``--split iid``: a seeded permutation; ``blocks``: sorted by feature norm, cut into
  contiguous blocks); then the features of the ``--scaled`` clients with the largest L_i
  are multiplied by the s that makes L_QM/L_AM equal each ``--targets`` value, solved from
  the L_i formula (fedsim.ef21.spread.scale_for_ratio); the achieved ratio is printed.
  EF21 (L_QM step) and EF21-W (L_AM step) run in the reference loop to the tolerance or
  ``--max-rounds``; a run cut off prints ">= N" rounds and the gain (EF21 rounds / EF21-W
  rounds) as a bound. A target no scale reaches (L_QM/L_AM < sqrt(n) always) prints why.
  The scaling changes the problem, so compare the two methods within a row.

The tables seen are in docs/ef21w.md.

Run:  .venv/bin/python benchmarks/ef21w.py                       (fedsim problem, both paths)
      .venv/bin/python benchmarks/ef21w.py --problem sweep       (about 6-8 minutes)
      .venv/bin/python benchmarks/ef21w.py --plot results/ef21w.png
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from fedsim.ef21.compressors import TopK
from fedsim.ef21.reference import EF21Trace, logreg_oracles, run_ef21
from fedsim.ef21.spread import qm_am_ratio, scale_for_ratio
from fedsim.problems.logreg import LAMBDA, smoothness
from fedsim.strategies.ef21w import ef21_stepsize, ef21w_stepsize, l_am, l_qm, smoothness_weights

Parts = list[tuple[np.ndarray, np.ndarray]]

# ----------------------------------------------------------------- reporting (pure)


def format_rounds(r: int | None, max_rounds: int) -> str:
    """Rounds to tolerance, or ``">= N"`` for a run cut off at ``N = max_rounds`` rounds."""
    return str(r) if r is not None else f">= {max_rounds}"


def format_gain(r_ef21: int | None, r_w: int | None, max_rounds: int) -> str:
    """EF21 rounds / EF21-W rounds, as a bound where a run was cut off at ``max_rounds``.

    EF21 cut off, EF21-W not: ``>= N / r_w``. EF21-W cut off, EF21 not: ``<= r_ef21 / N``.
    Both cut off: nothing is known (``?``).
    """
    if r_ef21 is not None and r_w is not None:
        return f"{r_ef21 / r_w:.3f}"
    if r_w is not None:
        return f">= {max_rounds / r_w:.3f}"
    if r_ef21 is not None:
        return f"<= {r_ef21 / max_rounds:.3f}"
    return "? (both cut off)"


def wire_mbit(d: int, k: int, rounds: int) -> float:
    """Mbit a client sends in fedsim to produce x^rounds: a dense float32 first message,
    then ``rounds - 1`` Top-k messages of k (uint32 index, float32 value) pairs."""
    return (32 * d + 64 * k * (rounds - 1)) / 1e6


# ------------------------------------------------------------------- the problems


def mnist5k_binary() -> tuple[np.ndarray, np.ndarray]:
    """All 5000 MNIST-5k images as ``A = [pixels/255, 1]`` and ``b`` = +1 (0-4) / -1 (5-9)."""
    from fedsim.data.datasets import _mnist5k_arrays

    X, y = _mnist5k_arrays()
    A = np.hstack([X / 255.0, np.ones((X.shape[0], 1))])
    return A, np.where(y < 5, 1.0, -1.0)


def split(A: np.ndarray, b: np.ndarray, n: int, how: str, seed: int) -> Parts:
    """``iid``: a seeded permutation cut into n; ``blocks``: sorted by feature norm, cut into n."""
    if how == "iid":
        order = np.random.default_rng(seed).permutation(len(b))
    else:
        order = np.argsort(np.linalg.norm(A, axis=1), kind="stable")
    return [(A[idx], b[idx]) for idx in np.array_split(order, n)]


METHODS = {  # name -> (strategy, theory, uses L_i weights)
    "EF21 / L_QM step": ("ef21", "auto", False),
    "EF21 / L_AM step": ("ef21", "am", False),
    "EF21-W / L_AM step": ("ef21w", "auto", True),
}
CONFIG = "configs/ef21w_mnist5k.yaml"


def fedsim_config(partition: str, n: int, k: int, mult: float, method: str, rounds: int, dtype: str) -> Any:
    from fedsim.config import load_config

    strategy, theory, _ = METHODS[method]
    return load_config(CONFIG, [
        f"data.num_clients={n}", f"clients_per_round={n}", f"data.partition.kind={partition}",
        f"rounds={max(rounds, 1)}", "eval_every=1000000", "output.progress=false", f"strategy.name={strategy}",
        f"strategy.params={{compressor: topk, k: {k}, multiplier: {mult}, theory: {theory}, dtype: {dtype}}}"])


def fedsim_parts(partition: str, n: int) -> Parts:
    """The clients' (A_i, b_i) exactly as fedsim's ef21 task builds them."""
    from fedsim.config import ClientSpec
    from fedsim.ef21.oracles import LogRegProblem, local_problem

    spec = ClientSpec.from_config(fedsim_config(partition, n, 1, 1.0, "EF21 / L_QM step", 1, "float32"))
    parts: Parts = []
    for c in range(n):
        p = local_problem(spec, c)
        if not isinstance(p, LogRegProblem):
            raise TypeError(f"client {c}: expected the numpy logistic regression, got {type(p).__name__}")
        parts.append((p.A, p.b))
    return parts


def through_fedsim(partition: str, n: int, k: int, mult: float, method: str, rounds: int, dtype: str) -> list[dict]:
    """Run the EF21W strategy in process (the real ClientApp, Flower serialization); the round rows."""
    import logging
    import tempfile
    from pathlib import Path

    from fedsim.clients.app import app
    from fedsim.engine.inprocess import InProcessGrid
    from fedsim.engine.server import run_server
    from fedsim.metrics import read_rows

    logging.getLogger("flwr").setLevel(logging.ERROR)
    cfg = fedsim_config(partition, n, k, mult, method, rounds, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        run_server(InProcessGrid(app, cfg.data.num_clients), cfg, Path(tmp))
        return read_rows(Path(tmp))[1:]


def run_methods(parts: Parts, k: int, mult: float, tol: float, max_rounds: int,
                methods: tuple[str, ...] = tuple(METHODS)) -> dict[str, Any]:
    """Each method in the reference loop from x = 0 to ``||grad f||^2 < tol`` or ``max_rounds``."""
    d = parts[0][0].shape[1]
    L = [smoothness(A) for A, _ in parts]
    C = TopK(k, d)
    steps = {
        "EF21 / L_QM step": (ef21_stepsize(L, C.alpha), None),
        "EF21 / L_AM step": (ef21w_stepsize(L, C.alpha), None),
        "EF21-W / L_AM step": (ef21w_stepsize(L, C.alpha), smoothness_weights(L)),
    }
    traces: dict[str, tuple[float, EF21Trace, float]] = {}
    for name in methods:
        gamma, w = steps[name]
        t0 = time.perf_counter()
        tr = run_ef21(logreg_oracles(parts), np.zeros(d), mult * gamma, max_rounds, compressor=C, weights=w, tol=tol)
        traces[name] = (mult * gamma, tr, time.perf_counter() - t0)
    return {"L": L, "traces": traces, "d": d, "C": C}


# ------------------------------------------------------------------------ the runs


def fedsim_problem(args: argparse.Namespace) -> dict[str, Any]:
    results = {}
    both = args.through == "both"
    print(f"MNIST-5k 0-4 vs 5-9 (fedsim's data), n={args.clients}, Top-{args.k} of d=785 "
          f"(alpha={args.k / 785:.4f}), step = {args.mult:g} x theory, tol ||grad f||^2 < {args.tol:g}")
    header = (f"{'setting':<24} {'method':<20} {'gamma':>10} {'rounds':>8} {'Mbit/client':>11} {'final':>9} "
              f"{'sec':>5}" + (f" {'fedsim rounds':>13} {'max rel diff':>12} {'sec':>5}" if both else ""))
    print(header)
    print("-" * len(header))
    for setting in args.partitions:
        res = run_methods(fedsim_parts(setting, args.clients), args.k, args.mult, args.tol, args.max_rounds)
        results[setting] = res
        L, d = res["L"], res["d"]
        label = f"{setting}: QM/AM {l_qm(L) / l_am(L):.4f}"
        for name, (gamma, tr, sec) in res["traces"].items():
            r = tr.rounds_to(args.tol)
            bits = f"{wire_mbit(d, args.k, r):.3f}" if r else f">= {wire_mbit(d, args.k, args.max_rounds):.3f}"
            line = (f"{label:<24} {name:<20} {gamma:>10.3e} {format_rounds(r, args.max_rounds):>8} "
                    f"{bits:>11} {tr.grad_norm_sq[-1]:>9.2e} {sec:>5.1f}")
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
              f"rounds EF21(L_QM)/EF21-W = {format_gain(tq, tw, args.max_rounds)}; "
              f"max|x_EF21(L_AM) - x_EF21-W| = {np.max(np.abs(xa - xw)):.1e}", flush=True)
    return results


def sweep_problem(args: argparse.Namespace) -> dict[str, Any]:
    A, b = mnist5k_binary()
    base = split(A, b, args.clients, args.split, args.seed)
    L0 = np.array([smoothness(Ai) for Ai, _ in base])
    scaled = [int(i) for i in np.argsort(-L0, kind="stable")[: args.scaled]]  # the largest L_i
    methods = ("EF21 / L_QM step", "EF21-W / L_AM step")
    print(f"MNIST-5k 0-4 vs 5-9, all 5000 samples, {args.split} split (seed {args.seed}); unscaled L_i in "
          f"[{L0.min():.2f}, {L0.max():.2f}], L_QM/L_AM {qm_am_ratio(L0):.4f}; the features of client(s) "
          f"{scaled} (largest L_i) times s. Reference loop from x = 0, Top-k, the same multiplier on both "
          "theory steps; gain = EF21 rounds / EF21-W rounds.")
    header = (f"{'n':>3} {'k':>3} {'mult':>5} {'tol':>7} {'scaled':>6} {'s':>8} {'target':>6} {'QM/AM':>7} "
              f"{'EF21 rounds':>11} {'EF21-W rounds':>13} {'gain':>8} {'EF21 Mbit':>10} {'EF21-W Mbit':>11} "
              f"{'sec':>6}")
    print(header)
    print("-" * len(header))
    results = {}
    for target in args.targets:
        lead = f"{args.clients:>3} {args.k:>3} {args.mult:>5g} {args.tol:>7.0e} {len(scaled):>6}"
        try:
            s = scale_for_ratio(L0, scaled, target, 2 * LAMBDA)
        except ValueError as e:
            print(f"{lead} {'-':>8} {target:>6g} unreachable: {e}", flush=True)
            continue
        parts = [(s * Ai if i in scaled else Ai, bi) for i, (Ai, bi) in enumerate(base)]
        res = run_methods(parts, args.k, args.mult, args.tol, args.max_rounds, methods)
        results[f"L_QM/L_AM {qm_am_ratio(res['L']):.2f}"] = res
        r = {name: tr.rounds_to(args.tol) for name, (_, tr, _) in res["traces"].items()}
        rq, rw = r["EF21 / L_QM step"], r["EF21-W / L_AM step"]
        mbit = [f"{wire_mbit(res['d'], args.k, x):.3f}" if x
                else f">= {wire_mbit(res['d'], args.k, args.max_rounds):.3f}" for x in (rq, rw)]
        sec = sum(t for _, _, t in res["traces"].values())
        print(f"{lead} {s:>8.4f} {target:>6g} {qm_am_ratio(res['L']):>7.4f} {format_rounds(rq, args.max_rounds):>11} "
              f"{format_rounds(rw, args.max_rounds):>13} {format_gain(rq, rw, args.max_rounds):>8} {mbit[0]:>10} "
              f"{mbit[1]:>11} {sec:>6.1f}", flush=True)
    return results


def plot(results: dict[str, Any], tol: float, path: str) -> None:
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
            ax.axhline(tol, color="grey", lw=0.5)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problem", choices=["fedsim", "sweep"], default="fedsim")
    ap.add_argument("--through", choices=["reference", "both"], default="both",
                    help="fedsim problem: also run the EF21W strategy in process and compare")
    ap.add_argument("--strategy-rounds", type=int, default=300, help="rounds run through the strategy per method")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="the strategy's wire precision")
    ap.add_argument("--clients", type=int, default=None, help="n (default: 10 fedsim, 60 sweep)")
    ap.add_argument("--k", type=int, default=8, help="Top-k coordinates kept (d = 785)")
    ap.add_argument("--mult", type=float, default=None, help="multiplier on the theoretical step (16 fedsim, 64 sweep)")
    ap.add_argument("--tol", type=float, default=None, help="stop at ||grad f||^2 < tol (1e-5 fedsim, 1e-4 sweep)")
    ap.add_argument("--max-rounds", type=int, default=None, help="cut a run off here (20000 fedsim, 25000 sweep)")
    ap.add_argument("--partitions", nargs="+", default=["iid", "shards"], help="fedsim problem: one spread each")
    ap.add_argument("--targets", type=float, nargs="+", default=[1, 2, 4, 7, 8],
                    help="sweep: the L_QM/L_AM to scale to, one row each")
    ap.add_argument("--scaled", type=int, default=1, help="sweep: how many clients (largest L_i) are scaled")
    ap.add_argument("--split", choices=["iid", "blocks"], default="iid", help="sweep: how the samples are split")
    ap.add_argument("--seed", type=int, default=0, help="sweep: the iid split's permutation")
    ap.add_argument("--plot", default=None, help="save ||grad f||^2 vs rounds and vs bits here")
    args = ap.parse_args()
    sweep = args.problem == "sweep"
    for key, fed, swp in (("clients", 10, 60), ("mult", 16.0, 64.0), ("tol", 1e-5, 1e-4), ("max_rounds", 20000, 25000)):
        if getattr(args, key) is None:
            setattr(args, key, swp if sweep else fed)
    results = sweep_problem(args) if sweep else fedsim_problem(args)
    if args.plot and results:
        plot(results, args.tol, args.plot)


if __name__ == "__main__":
    main()
