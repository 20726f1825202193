"""Simulated wall-clock time to a target accuracy, per codec, under a mobile device mix.

Runs the quickstart experiment (MNIST-5k, CNN, 100 clients, 10 a round) with the network
model on (default mix: 60% 4g-phone, 30% wifi-phone, 10% rpi-wifi; see
docs/network-model.md) once per codec, in process (the same ServerApp/ClientApp code as
`fedsim run`, without Ray), and prints a table: rounds and simulated seconds to the
target, final accuracy, uplink bytes, mean simulated round time.

    python benchmarks/time_to_accuracy.py [--codecs identity fp16 ...] [--rounds 30]
        [--target 0.8] [--set key=value ...]

A codec with parameters is written NAME:JSON, e.g. 'topk:{"density": 0.05}'.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIX = "{mix: {4g-phone: 0.6, wifi-phone: 0.3, rpi-wifi: 0.1}}"


def run_one(codec: str, rounds: int, target: float, overrides: list[str]) -> dict:
    from fedsim.config import load_config
    from fedsim.engine.simulation import simulate
    from fedsim.metrics import read_rows

    name, _, params = codec.partition(":")
    sets = [f"codec.name={name}", f"codec.params={params or '{}'}", f"rounds={rounds}",
            f"target_accuracy={target}", f"network={MIX}", "simulation.backend=inprocess",
            "output.progress=false", "output.plots=false", "name=tta"] + overrides
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", sets)
    run_dir = Path(tempfile.mkdtemp(prefix="fedsim-tta-"))
    t0 = time.perf_counter()
    summary = simulate(cfg, run_dir)
    rows = read_rows(run_dir)[1:]
    return {
        "codec": codec, "summary": summary, "wall": time.perf_counter() - t0,
        "mean_round_s": statistics.mean(r["sim_round_s"] for r in rows),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--codecs", nargs="+", default=["identity", "fp16"])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--target", type=float, default=0.8)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    results = []
    for codec in args.codecs:
        r = run_one(codec, args.rounds, args.target, args.overrides)
        results.append(r)
        print(f"{codec}: done in {r['wall']:.0f} s of real time", flush=True)
    print()
    print(f"quickstart, network mix {MIX}, target accuracy {args.target}, {args.rounds} rounds")
    print("| codec | rounds to target | simulated s to target | final acc | uplink MB | mean simulated round s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        s = r["summary"]
        t = s.get("sim_time_to_target")
        print(f"| {r['codec']} | {s.get('round_to_target') or '-'} | {t:.1f} |" if t is not None else
              f"| {r['codec']} | - | not reached |", end="")
        print(f" {s['final_accuracy']:.4f} | {s['total_bytes_up'] / 1e6:.2f} | {r['mean_round_s']:.2f} |")
    json.dump([{k: v for k, v in r.items()} for r in results], open(Path(tempfile.gettempdir()) / "tta.json", "w"), default=str)


if __name__ == "__main__":
    main()
