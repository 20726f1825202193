"""Bits per coordinate actually sent vs final accuracy: dense, DQSG, NDQSG (nested), QSGD.

MNIST-5k, the CNN, 100 clients (Dirichlet 0.5), 10 a round: ``configs/ndqsg_mnist.yaml``
with only the strategy and codec changed per row, run on the in-process backend (the
real ClientApp, Flower serialization, no Ray). Bits per coordinate come from the run's
metrics: ``8 * cum_bytes_up / (replies * model coordinates)``, i.e. every payload byte
that reached the server (symbols and bucket scales), rejected replies included.

    .venv/bin/python benchmarks/quantization.py [--rounds 20] [--seed 0] [--only dqsg ndqsg]

Goal (issue 5): NDQSG <= 0.6x the bits of DQSG at equal accuracy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ndqsg_mnist.yaml"

# name -> overrides of configs/ndqsg_mnist.yaml
METHODS: dict[str, list[str]] = {
    "dense (fp32)": ["strategy.name=fedavg", "strategy.params={}", "codec.name=identity", "codec.params={}"],
    "DQSG M=3": ["strategy.name=fedavg", "strategy.params={}", "codec.name=dqsg", "codec.params={levels: 3, bucket: 512}"],
    "NDQSG M1=3 M2=1 (2 ref)": [],
    "NDQSG M1=3 M2=1 (1 ref)": ["strategy.params.reference_clients=1"],
    "NDQSG (2 ref) alpha=0.5": ["codec.params.alpha=0.5"],
    "NDQSG (2 ref) alpha=1/3": ["codec.params.alpha=0.3333333333"],
    "QSGD s=3": ["strategy.name=fedavg", "strategy.params={}", "codec.name=qsgd", "codec.params={levels: 3, bucket: 512}"],
    "QSGD s=1": ["strategy.name=fedavg", "strategy.params={}", "codec.name=qsgd", "codec.params={levels: 1, bucket: 512}"],
}


def run(name: str, overrides: list[str], rounds: int, seed: int) -> dict[str, object]:
    from fedsim.clients.app import app
    from fedsim.config import load_config
    from fedsim.engine.inprocess import InProcessGrid
    from fedsim.engine.server import run_server
    from fedsim.metrics import read_rows

    cfg = load_config(CONFIG, [f"rounds={rounds}", f"seed={seed}", "output.progress=false", "output.plots=false",
                               "simulation.backend=inprocess", *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = run_server(InProcessGrid(app, cfg.data.num_clients), cfg, Path(tmp))
        wall = time.perf_counter() - t0
        rows = read_rows(tmp)
    from fedsim.data.datasets import load_dataset
    from fedsim.models import build_model

    ds = load_dataset(cfg.data, cfg.seed)
    model = build_model(cfg.model.name, cfg.model.params, ds.input_shape, ds.num_classes, cfg.seed)
    coords = sum(p.numel() for p in model.state_dict().values())
    replies = sum(r.get("replied", 0) + r.get("rejected", 0) for r in rows[1:])
    out: dict[str, object] = {
        "method": name,
        "bits": 8.0 * rows[-1]["cum_bytes_up"] / (replies * coords),
        "acc": summary["final_accuracy"],
        "best": summary["best_accuracy"],
        "wall": wall,
    }
    nested = [r for r in rows[1:] if r.get("nested_clients")]
    if nested:
        out["ref_bits"] = next((r["reference_bits_per_coord"] for r in nested if r["reference_bits_per_coord"]), None)
        out["nested_bits"] = nested[0]["nested_bits_per_coord"]
        out["used"] = sum(r["nested_accepted"] for r in nested) / sum(r["nested_clients"] for r in nested)
        out["fail"] = sum(r["nested_failure_fraction"] or 0.0 for r in nested) / len(nested)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="substrings of method names to run")
    args = ap.parse_args(argv)
    import logging

    logging.getLogger("flwr").setLevel(logging.ERROR)
    logging.getLogger("fedsim").setLevel(logging.ERROR)
    results = []
    for name, overrides in METHODS.items():
        if args.only and not any(s.lower() in name.lower() for s in args.only):
            continue
        results.append(run(name, overrides, args.rounds, args.seed))
        print(f"  done: {name} ({results[-1]['wall']:.0f} s)", file=sys.stderr, flush=True)
    dq = next((r["bits"] for r in results if r["method"].startswith("DQSG")), None)
    print(f"\nMNIST-5k, CNN, 100 clients (Dirichlet 0.5), 10 a round, {args.rounds} rounds, seed {args.seed}, inprocess")
    print(f"{'method':26} {'bits/coord':>10} {'x DQSG':>7} {'final acc':>9} {'best acc':>8} "
          f"{'ref bits':>8} {'nest bits':>9} {'nested used':>11} {'detect fail':>11} {'wall s':>6}")
    for r in results:
        ratio = f"{r['bits'] / dq:.3f}" if dq else "-"
        extra = (f"{r['ref_bits']:8.3f} {r['nested_bits']:9.3f} {r['used']:11.2f} {r['fail']:11.4f}"
                 if "used" in r else f"{'-':>8} {'-':>9} {'-':>11} {'-':>11}")
        print(f"{r['method']:26} {r['bits']:10.3f} {ratio:>7} {r['acc']:9.3f} {r['best']:8.3f} {extra} {r['wall']:6.0f}")


if __name__ == "__main__":
    main()
