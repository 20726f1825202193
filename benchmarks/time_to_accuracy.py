"""Simulated wall-clock time to a target accuracy, per codec, under a mobile device mix.

Runs one experiment with the network model on (mix: 60% 4g-phone, 30% wifi-phone, 10%
rpi-wifi; docs/network-model.md) once per codec, in process (the same ServerApp/ClientApp
code as `fedsim run`, without Ray), and prints a table: rounds and simulated seconds to
the target, the speed-up over the first codec (dense), final accuracy, uplink bytes, the
mean simulated round time and what it is made of (latency, download of the dense model,
compute, upload of the update: the legs of each round's last arrival, averaged).

Workloads:

- ``quickstart`` (default): configs/quickstart.yaml, MNIST-5k and the small CNN (28,938
  parameters), 30 rounds; compute-bound on phones.
- ``fashion-cnn``: configs/fashion_cnn_dense.yaml, McMahan et al.'s FedAvg CNN (1,663,370
  parameters, a 6.65 MB float32 update, ~9 s over a median 4G uplink) on a Fashion-MNIST
  subset (MNIST-5k where Fashion-MNIST is not installed; the table says which); 30 rounds,
  120 for dense and DGC, whose runs benchmarks/dgc.py --workload fashion-cnn shares.

    python benchmarks/time_to_accuracy.py [--workload quickstart|fashion-cnn]
        [--codecs identity fp16 ...] [--rounds R] [--target 0.8] [--set key=value ...]

A codec is written NAME[:JSON][@ROUNDS], e.g. 'topk:{"density": 0.05}' or 'identity@120'
(ROUNDS: this codec's rounds instead of --rounds). Every run's per-round metrics stay in
``runs/bench/<name>-<config hash>/``; a rerun with the same settings reads them back.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from fashion_cnn import DENSE_CFG, DGC_CFG, LEGS, ROOT, Run, codec_label, describe, round_legs, run_cached, workload

QUICKSTART_CFG = ROOT / "configs" / "quickstart.yaml"
MIX = "{mix: {4g-phone: 0.6, wifi-phone: 0.3, rpi-wifi: 0.1}}"
GOAL_SPEEDUP = 3.0


def fashion_codecs() -> list[str]:
    """The fashion-cnn comparison: dense, fp16, top-k, QSGD, DGC (configs/fashion_cnn_dgc.yaml), DQSG."""
    from fedsim.config import load_config

    dgc = json.dumps(load_config(DGC_CFG).codec.params)
    return ["identity@120", "fp16", 'topk:{"density": 0.01, "values": "float16", "index_coding": "delta-varint"}',
            'qsgd:{"levels": 1}', f"dgc:{dgc}@120", 'dqsg:{"levels": 3}']


def parse_codec(spec: str, rounds: int) -> tuple[str, dict[str, Any], int]:
    """``NAME[:JSON][@ROUNDS]`` -> (name, params, rounds)."""
    head, at, tail = spec.rpartition("@") if "@" in spec else (spec, "", "")
    if at and not tail.isdigit():
        raise ValueError(f"codec {spec!r}: expected NAME[:JSON][@ROUNDS] with ROUNDS a positive integer")
    name, _, params = head.partition(":")
    parsed = json.loads(params) if params else {}
    if not isinstance(parsed, dict):
        raise ValueError(f"codec {spec!r}: the parameters must be a JSON object")
    return name, parsed, int(tail) if at else rounds


def time_to_target(rows: list[dict[str, Any]], target: float) -> tuple[int, float] | None:
    """(round, simulated seconds at its end) of the first evaluation at or above ``target``."""
    for r in rows:
        acc = r.get("test_accuracy")
        if acc is not None and acc >= target and r.get("sim_time") is not None:
            return int(r["round"]), float(r["sim_time"])
    return None


def run_codec(spec: str, rounds: int, base: list[str], fashion: bool) -> Run:
    name, params, n = parse_codec(spec, rounds)
    sets = [f"codec.name={name}", f"codec.params={json.dumps(params)}", f"rounds={n}", *base]
    if not fashion:
        sets.append(f"network={MIX}")
    return run_cached(DENSE_CFG if fashion else QUICKSTART_CFG, sets)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=("quickstart", "fashion-cnn"), default="quickstart")
    ap.add_argument("--codecs", nargs="+", default=None,
                    help="default: identity fp16 (quickstart); the six of fashion_codecs() (fashion-cnn)")
    ap.add_argument("--rounds", type=int, default=None, help="default 30 (quickstart and fashion-cnn)")
    ap.add_argument("--target", type=float, default=0.8)
    ap.add_argument("--data", choices=("auto", "mnist5k", "fashion-mnist"), default="auto")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    fashion = args.workload == "fashion-cnn"
    rounds = args.rounds or 30
    codecs = args.codecs or (fashion_codecs() if fashion else ["identity", "fp16"])
    if fashion:
        w = workload(args.data)
        dataset, base = w.dataset, [*w.overrides, *args.overrides]
    else:
        dataset, base = "MNIST-5k", list(args.overrides)
    results = []
    for spec in codecs:
        r = run_codec(spec, rounds, base, fashion)
        results.append((r, time_to_target(r.rows, args.target), round_legs(r)))
        print(f"{codec_label(r.cfg)}: {r.summary['rounds']} rounds, in {r.run_dir.relative_to(ROOT)}", flush=True)

    dense_t = results[0][1]
    print(f"\nTime to {args.target} test accuracy: {describe(results[0][0].cfg, dataset)}")
    print(f"speed-up = the first row's ({codec_label(results[0][0].cfg)}) simulated time to target / the row's; "
          "a round's time is made of the legs of its last arrival (means over rounds): "
          "rtt + download of the dense model + compute + upload")
    print("| codec | rounds run | rounds to target | simulated s to target | speed-up | final acc | uplink MB "
          "| up B/client/round | mean round s | = rtt + down + compute + up (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    best = 0.0
    for r, hit, legs in results:
        s = r.summary
        per_client = s["total_bytes_up"] / max(sum(int(x.get("replied") or 0) for x in r.rows), 1)
        reach = f"{hit[0]} | {hit[1]:.0f}" if hit else "- | not reached"
        speedup = dense_t[1] / hit[1] if hit and dense_t else None
        if speedup is not None and r is not results[0][0]:
            best = max(best, speedup)
        parts = " + ".join(f"{legs[k]:.1f}" for k in LEGS)
        print(f"| {codec_label(r.cfg)} | {s['rounds']} | {reach} | "
              f"{f'{speedup:.2f}x' if speedup is not None else '-'} | {s['final_accuracy']:.4f} | "
              f"{s['total_bytes_up'] / 1e6:.2f} | {per_client:,.0f} | {legs['round_s']:.1f} | {parts} |")
    if dense_t is None:
        print(f"goal: the first codec never reached {args.target}; pick a lower --target")
    else:
        print(f"goal: best compressed codec reaches {args.target} {best:.2f}x sooner than dense "
              f"({'met' if best >= GOAL_SPEEDUP else 'missed'}: goal >= {GOAL_SPEEDUP:.0f}x)")


if __name__ == "__main__":
    main()
