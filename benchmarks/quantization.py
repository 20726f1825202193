"""Bits per coordinate actually sent vs final accuracy: dense, DQSG, NDQSG (nested), QSGD.

MNIST-5k, the CNN, 100 clients, run on the in-process backend (the real ClientApp, Flower
serialization, no Ray), in one of three settings (``--setting``):

``noniid``    ``configs/ndqsg_mnist.yaml``: Dirichlet(0.5), 10 clients a round (the hard case);
``noniid20``  the same with 20 clients a round;
``iid``       ``configs/ndqsg_mnist_iid.yaml``: IID partition, 20 clients a round.

Each row overrides only the strategy and the codec, with every parameter spelled out (a row
does not depend on the config's own strategy/codec parameters). Bits per coordinate come
from the run's metrics: ``8 * cum_bytes_up / (replies * model coordinates)``, i.e. every
payload byte that reached the server (symbols and bucket scales), rejected replies included.

    .venv/bin/python benchmarks/quantization.py [--setting noniid] [--rounds 20] [--seed 0]
        [--only "DQSG M=3" "a=0.4"] [--set key=value ...]
    .venv/bin/python benchmarks/quantization.py --probe [--setting iid]   # decodability of real updates

Goal (issue 5): NDQSG <= 0.6x the bits of DQSG (M=3) at equal accuracy (here: final test
accuracy within 1 point of DQSG's).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ndqsg_mnist.yaml"

# setting -> (config, extra overrides, what the header line says)
SETTINGS: dict[str, tuple[Path, list[str], str]] = {
    "noniid": (CONFIG, [], "Dirichlet 0.5, 10 a round"),
    "noniid20": (CONFIG, ["clients_per_round=20"], "Dirichlet 0.5, 20 a round"),
    "iid": (ROOT / "configs" / "ndqsg_mnist_iid.yaml", [], "IID, 20 a round"),
}


def _fedavg(codec: str, params: str) -> list[str]:
    return ["strategy.name=fedavg", "strategy.params={}", f"codec.name={codec}", f"codec.params={params}"]


def _nested(refs: int, threshold: float, alpha: str = "1.0", estimator: str = "mmse", bucket: int = 512) -> list[str]:
    return ["strategy.name=ndqsg-nested",
            f"strategy.params={{reference_clients: {refs}, client_failure_threshold: {threshold}, "
            "stale_failure_threshold: 0.01}",
            "codec.name=ndqsg",
            f"codec.params={{m1: 3, m2: 1, alpha: {alpha}, estimator: {estimator}, bucket: {bucket}}}"]


THIRD = "0.3333333333"
# name -> overrides of the setting's config. The first four NDQSG rows are the paper's decoder
# (alpha = 1 or the MMSE estimator) with the old default rule (reject a client with > 1 %
# detectable failures); "accept" rows keep every nested client (failures repaired).
METHODS: dict[str, list[str]] = {
    "dense (fp32)": _fedavg("identity", "{}"),
    "DQSG M=3": _fedavg("dqsg", "{levels: 3, bucket: 512}"),
    "NDQSG M1=3 M2=1 (2 ref)": _nested(2, 0.01),
    "NDQSG M1=3 M2=1 (1 ref)": _nested(1, 0.01),
    "NDQSG (2 ref) alpha=0.5": _nested(2, 0.01, "0.5"),
    "NDQSG (2 ref) alpha=1/3": _nested(2, 0.01, THIRD),
    "NDQSG (1 ref) accept": _nested(1, 1.0),
    "NDQSG (1 ref) a=0.4 unb": _nested(1, 1.0, "0.4", "unbiased"),
    "NDQSG (2 ref) a=0.4 unb": _nested(2, 1.0, "0.4", "unbiased"),
    "NDQSG (1 ref) a=1/3 unb": _nested(1, 1.0, THIRD, "unbiased"),
    "NDQSG (1 ref) a=0.4 b4096": _nested(1, 1.0, "0.4", "unbiased", 4096),
    "DQSG M=3 b4096": _fedavg("dqsg", "{levels: 3, bucket: 4096}"),
    "DQSG M=1": _fedavg("dqsg", "{levels: 1, bucket: 512}"),
    "QSGD s=3": _fedavg("qsgd", "{levels: 3, bucket: 512}"),
    "QSGD s=1": _fedavg("qsgd", "{levels: 1, bucket: 512}"),
}
DEFAULT_ROWS = ["dense (fp32)", "DQSG M=3", "NDQSG M1=3 M2=1 (2 ref)", "NDQSG M1=3 M2=1 (1 ref)",
                "NDQSG (1 ref) accept", "NDQSG (1 ref) a=0.4 unb", "NDQSG (1 ref) a=1/3 unb", "DQSG M=1",
                "QSGD s=3", "QSGD s=1"]


def run(name: str, overrides: list[str], rounds: int, seed: int, config: Path = CONFIG) -> dict[str, object]:
    from fedsim.clients.app import app
    from fedsim.config import load_config
    from fedsim.engine.inprocess import InProcessGrid
    from fedsim.engine.server import run_server
    from fedsim.metrics import read_rows

    cfg = load_config(config, [f"rounds={rounds}", f"seed={seed}", "output.progress=false", "output.plots=false",
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


def probe(config: Path, overrides: list[str], seed: int, rounds: tuple[int, ...] = (1, 5, 15)) -> None:
    """How close real client updates are to each other: what the nested code can decode.

    Runs dense FedAvg (the torch trainer, no codec) and, at each of ``rounds``, takes the
    updates ``g_i`` of the sampled clients and prints, averaged over the clients,
    ``|g_i - y_i|^2 / |g_i|^2`` with ``y_i`` the mean of the *other* clients (the best side
    information a round can give), and the leave-one-out failure estimate of NDQSG
    (M1 = 3, rho = 3, bucket 512; :func:`fedsim.codecs.nested.estimate_failures_loo`) for
    alpha = 1 and 0.4, before any repair.
    """
    import numpy as np

    from fedsim.clients import torch_trainer as tt
    from fedsim.codecs.nested import estimate_failures_loo
    from fedsim.config import load_config
    from fedsim.data.datasets import load_dataset, load_partition
    from fedsim.engine.wrapper import sample_clients
    from fedsim.models import build_model

    cfg = load_config(config, [f"seed={seed}", *overrides])
    tt.one_thread()
    ds = load_dataset(cfg.data, cfg.seed)
    model = build_model(cfg.model.name, cfg.model.params, ds.input_shape, ds.num_classes, cfg.seed)
    w, t = tt.get_weights(model), cfg.train
    sizes = [a.size for a in w]
    print(f"{'round':>5} {'|g-y|^2/|g|^2':>13} {'LOO fail a=1':>12} {'LOO fail a=0.4':>14}")
    for rnd in range(1, max(rounds) + 1):
        clients = sample_clients(cfg.seed, rnd, list(range(cfg.data.num_clients)), cfg.clients_per_round)
        deltas, n = [], []
        for c in clients:
            x, y = load_partition(cfg.data, cfg.seed, c)
            tt.set_weights(model, w)
            m = tt.train(model, x, y, epochs=t.local_epochs, batch_size=t.batch_size, lr=t.lr,
                         momentum=t.momentum, weight_decay=t.weight_decay, seed=rnd * 100_003 + c)
            deltas.append([a - b for a, b in zip(tt.get_weights(model), w)])
            n.append(m["num-examples"])
        if rnd in rounds:
            flat = np.stack([np.concatenate([a.ravel() for a in d]) for d in deltas]).astype(np.float64)
            others = (flat.sum(0) - flat) / (len(flat) - 1)
            ratio = float(np.mean(((flat - others) ** 2).sum(1) / (flat ** 2).sum(1)))
            fail = [float(np.average([estimate_failures_loo([d[k] for d in deltas], 3, 3, a, 512)
                                      for k in range(len(w))], weights=sizes)) for a in (1.0, 0.4)]
            print(f"{rnd:5d} {ratio:13.2f} {fail[0]:12.3f} {fail[1]:14.3f}", flush=True)
        share = np.asarray(n) / sum(n)
        w = [b + sum(f * d[k] for f, d in zip(share, deltas)) for k, b in enumerate(w)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="noniid")
    ap.add_argument("--only", nargs="*", help="substrings of method names to run (default: the main rows)")
    ap.add_argument("--set", nargs="*", default=[], dest="extra", help="extra config overrides for every row")
    ap.add_argument("--probe", action="store_true",
                    help="instead of the table: how close real client updates are (dense FedAvg, rounds 1, 5, 15)")
    args = ap.parse_args(argv)
    import logging

    logging.getLogger("flwr").setLevel(logging.ERROR)
    logging.getLogger("fedsim").setLevel(logging.ERROR)
    results = []
    config, setting, what = SETTINGS[args.setting]
    if args.probe:
        print(f"MNIST-5k, CNN, 100 clients ({what}), seed {args.seed}: client updates of a dense FedAvg run")
        probe(config, [*setting, *args.extra], args.seed)
        return
    exact = set(args.only or []) & set(METHODS)  # a full name runs that row only
    loose = [s.lower() for s in args.only or [] if s not in exact]
    for name, overrides in METHODS.items():
        if args.only and name not in exact and not any(s in name.lower() for s in loose):
            continue
        if not args.only and name not in DEFAULT_ROWS:
            continue
        results.append(run(name, [*setting, *args.extra, *overrides], args.rounds, args.seed, config))
        print(f"  done: {name} ({results[-1]['wall']:.0f} s)", file=sys.stderr, flush=True)
    dq = next((r for r in results if r["method"] == "DQSG M=3"), None)
    extra = f", {' '.join(args.extra)}" if args.extra else ""
    print(f"\nMNIST-5k, CNN, 100 clients ({what}{extra}), {args.rounds} rounds, seed {args.seed}, inprocess")
    print(f"{'method':26} {'bits/coord':>10} {'x DQSG':>7} {'final acc':>9} {'vs DQSG':>7} {'best acc':>8} "
          f"{'ref bits':>8} {'nest bits':>9} {'nested used':>11} {'detect fail':>11} {'wall s':>6}")
    for r in results:
        ratio = f"{r['bits'] / dq['bits']:.3f}" if dq else "-"  # type: ignore[operator]
        gap = f"{100 * (r['acc'] - dq['acc']):+.1f}" if dq else "-"  # type: ignore[operator]
        extra = (f"{r['ref_bits']:8.3f} {r['nested_bits']:9.3f} {r['used']:11.2f} {r['fail']:11.4f}"
                 if "used" in r else f"{'-':>8} {'-':>9} {'-':>11} {'-':>11}")
        print(f"{r['method']:26} {r['bits']:10.3f} {ratio:>7} {r['acc']:9.3f} {gap:>7} {r['best']:8.3f} {extra} {r['wall']:6.0f}")


if __name__ == "__main__":
    main()
