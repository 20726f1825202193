"""Robustness table: final accuracy of the honest clients' models under each attack.

The MoNNA paper's MNIST setting (Farhadkhani et al., ICML 2023): MNIST-5k, n = 26 clients,
f = 5 Byzantine, Dirichlet(1) label skew; FedAvg, NNA, MoNNA and NNM + trimmed mean
(``configs/monna_mnist*.yaml``), with no attack and under sign flipping, ALIE, FOE, IPM,
mimic, label flipping and Gaussian noise. ALIE and FOE take the factor that hurts the
strategy's own rule most, re-searched every round (``line_search`` attack, as the paper).
Every run uses the in-process backend (the real ClientApp, no Ray) in this process.

For MoNNA / NNA a cell is the mean test accuracy of the 21 honest clients' models after the
last round (their minimum in brackets); FedAvg and NNM + TM have one global model, so the
cell is its test accuracy. The configs are shortened for a CPU (see their comments)::

    python benchmarks/robustness.py                      # the whole table (~10 min, 2 cores)
    python benchmarks/robustness.py --rounds 10 --strategies MoNNA FedAvg --attacks none sign_flip
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from fedsim.config import Config, load_config

STRATEGIES = {  # label -> (config, the rule a line-search attack searches against)
    "FedAvg": ("configs/monna_mnist_fedavg.yaml", "mean"),
    "NNA": ("configs/monna_mnist_nna.yaml", "nna"),
    "MoNNA": ("configs/monna_mnist.yaml", "nna"),
    "NNM+TM": ("configs/monna_mnist_nnm_tm.yaml", "nnm+trimmed_mean"),
}


def attack_for(name: str, against: str, f: int) -> str | None:
    """The ``attack=`` override for ``name`` with ``f`` attackers (None: no attack)."""
    specs = {
        "none": None,
        "sign_flip": "{name: sign_flip}",
        "alie": f"{{name: line_search, params: {{attack: alie, against: '{against}'}}}}",
        "foe": f"{{name: line_search, params: {{attack: foe, against: '{against}'}}}}",
        "ipm": "{name: ipm, params: {eps: 0.1}}",
        "mimic": "{name: mimic}",
        "label_flip": "{name: label_flip}",
        "gaussian": "{name: gaussian, params: {std: 1.0}}",
    }
    spec = specs[name]
    return None if spec is None else spec[:-1] + f", count: {f}}}"


def run(cfg: Config, run_dir: Path) -> list[dict[str, Any]]:
    from fedsim.clients.app import app
    from fedsim.engine.inprocess import InProcessGrid
    from fedsim.engine.server import run_server
    from fedsim.metrics import read_rows

    run_server(InProcessGrid(app, cfg.data.num_clients), cfg, run_dir)
    return read_rows(run_dir)


def cell(rows: list[dict[str, Any]]) -> str:
    last = rows[-1]
    if last.get("honest_accuracy_mean") is not None:
        return f"{100 * last['honest_accuracy_mean']:.1f} ({100 * last['honest_accuracy_min']:.1f})"
    return f"{100 * last['test_accuracy']:.1f}"


def main() -> None:
    attacks = ["none", "sign_flip", "alie", "foe", "ipm", "mimic", "label_flip", "gaussian"]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    ap.add_argument("--attacks", nargs="+", default=attacks, choices=attacks)
    ap.add_argument("--rounds", type=int, default=None, help="override the configs' rounds")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra config override")
    args = ap.parse_args()
    import fedsim.engine.server  # noqa: F401  (imports flwr, which sets its own log level)

    logging.getLogger("flwr").setLevel(logging.ERROR)
    logging.getLogger("fedsim").setLevel(logging.ERROR)

    table: dict[str, dict[str, str]] = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for label in args.strategies:
            path, against = STRATEGIES[label]
            table[label] = {}
            for attack in args.attacks:
                base = load_config(path)
                f = 5 if base.data.num_clients == 26 else max(1, (base.data.num_clients - 1) // 5)
                sets = ["output.progress=false", "output.plots=false"] + list(args.sets)
                if args.rounds is not None:
                    sets += [f"rounds={args.rounds}", f"eval_every={args.rounds}"]
                    if base.strategy.name in ("monna", "nna"):
                        sets.append(f"strategy.params.evaluate_every={args.rounds}")
                spec = attack_for(attack, against, f)
                if spec is not None:
                    sets.append(f"attack={spec}")
                cfg = load_config(path, sets)
                t0 = time.perf_counter()
                table[label][attack] = cell(run(cfg, Path(tmp) / f"{label}-{attack}"))
                print(f"  {label:<7} {attack:<11} {table[label][attack]:>12}  ({time.perf_counter() - t0:.1f} s)",
                      flush=True)
    cfg0 = load_config(STRATEGIES[args.strategies[0]][0], [f"rounds={args.rounds}"] if args.rounds else [])
    print(f"\nMNIST-5k, n={cfg0.data.num_clients}, f=5, Dirichlet(1), {cfg0.rounds} rounds, "
          f"{cfg0.model.name} {cfg0.model.params}; test accuracy % of honest models "
          f"(MoNNA/NNA: mean (min) over honest clients); {time.perf_counter() - t_all:.0f} s in all\n")
    print("| strategy | " + " | ".join(args.attacks) + " |")
    print("|---|" + "---|" * len(args.attacks))
    for label, row in table.items():
        print(f"| {label} | " + " | ".join(row[a] for a in args.attacks) + " |")


if __name__ == "__main__":
    main()
