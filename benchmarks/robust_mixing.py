"""Time the server's MoNNA mixing step and the robust aggregators on one round.

Prints a table: n clients, d parameters, milliseconds per call (best of ``--repeat``) for
the vectorised all-clients NNA (both rules), a per-client loop of single-pivot NNA (the
naive reference), NNM, NNM + trimmed mean and Krum. Keep it short on shared machines:

    python benchmarks/robust_mixing.py --n 26 --f 5 --d 10000 100000
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

import numpy as np

from fedsim.robust.aggregators import krum, nnm, trimmed_mean, with_nnm
from fedsim.robust.nna import nna, nna_mix, received_sets


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def loop_nna(x: np.ndarray, received: np.ndarray, f: int) -> list[np.ndarray]:
    """The naive reference: single-pivot NNA for each honest client in turn."""
    return [nna(x[i], x[received[i]], f, "reference") for i in range(len(x) - f)]


def nnm_trimmed_mean(x: np.ndarray, f: int) -> np.ndarray:
    return with_nnm(trimmed_mean)(x, f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=26)
    ap.add_argument("--f", type=int, default=5)
    ap.add_argument("--d", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n, f = args.n, args.f
    byz = list(range(n - f, n))
    print(f"{'n':>4} {'d':>9} {'ref-mix':>9} {'byzfl-mix':>9} {'loop-nna':>9} {'nnm':>9} "
          f"{'nnm+tm':>9} {'krum':>9}   (ms, float32)")
    for d in args.d:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(n, d)).astype(np.float32)
        mask = received_sets(n, f, list(range(n - f)), byzantine=byz, rng=rng)
        calls: list[Callable[[], object]] = [
            functools.partial(nna_mix, x, f, rule="reference", byzantine=byz, received=mask),
            functools.partial(nna_mix, x, f, rule="byzfl", byzantine=byz),
            functools.partial(loop_nna, x, mask, f),
            functools.partial(nnm, x, f),
            functools.partial(nnm_trimmed_mean, x, f),
            functools.partial(krum, x, f),
        ]
        row = [best_ms(call, args.repeat) for call in calls]
        print(f"{n:>4} {d:>9} " + " ".join(f"{v:>9.1f}" for v in row))


if __name__ == "__main__":
    main()
