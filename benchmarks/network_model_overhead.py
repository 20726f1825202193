"""How long the network model itself takes per round (host CPU), by population size.

Prints a table: clients, sampled per round, ms per round for available + plan + settle.
Run: .venv/bin/python benchmarks/network_model_overhead.py
"""

from __future__ import annotations

import time

import numpy as np

from fedsim.network import ClientWork, NetworkConfig, NetworkModel

CFG = NetworkConfig.model_validate({
    "mix": {"4g-phone": 0.6, "wifi-phone": 0.3, "rpi-wifi": 0.1},
    "deadline_s": 120, "overcommit": 0.3,
})
WORK = ClientWork(400_000, 400_000, 500, 1, 3e6)


def main() -> None:
    print(f"{'clients':>8} {'K':>6} {'build ms':>9} {'ms/round':>9}")
    for n, k in ((100, 10), (1_000, 100), (10_000, 100), (10_000, 1_000)):
        t0 = time.perf_counter()
        net = NetworkModel(CFG, seed=0, num_clients=n)
        build = time.perf_counter() - t0
        rounds = 5
        t0 = time.perf_counter()
        for r in range(1, rounds + 1):
            avail = net.available(r)
            m = net.num_to_sample(k, len(avail))
            s = np.random.default_rng(r).choice(avail, m, replace=False).tolist()
            plan = net.plan(r, s, keep=k)
            net.settle(r, {c: WORK for c in plan.send_to})
        per = (time.perf_counter() - t0) / rounds
        print(f"{n:>8} {k:>6} {build * 1e3:>9.1f} {per * 1e3:>9.1f}")


if __name__ == "__main__":
    main()
