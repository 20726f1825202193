"""The ``fashion-cnn`` workload of benchmarks/dgc.py and benchmarks/time_to_accuracy.py.

McMahan et al.'s FedAvg CNN (``cnn-fedavg``, 1,663,370 parameters; McMahan, Moore, Ramage,
Hampson, Aguera y Arcas, "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017) on a class-balanced subset of Fashion-MNIST (Xiao,
Rasul, Vollgraf 2017), written once as an ``npz`` dataset so that a round trains on a few
hundred examples a client (the whole 60,000 over 100 clients would be 600 each, and a
10,000-image evaluation every round would cost more than the training on a shared CPU).
Where Fashion-MNIST's IDX files are not installed (``make data``, Debian's
``dataset-fashion-mnist``), the workload falls back to MNIST-5k and says so.

The configs (``configs/fashion_cnn_dense.yaml``, ``configs/fashion_cnn_dgc.yaml``) name
the subset at ``runs/data/fashion-mnist-<n_train>-<n_test>.npz``; :func:`workload`
writes it there if it is missing and returns the overrides that point a run at it.

    python benchmarks/fashion_cnn.py [--train 15000] [--test 2000]   # write the subset
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "runs" / "data"
RUNS_DIR = ROOT / "runs" / "bench"  # raw per-round metrics of every benchmark run (git-ignored)
DENSE_CFG = ROOT / "configs" / "fashion_cnn_dense.yaml"
DGC_CFG = ROOT / "configs" / "fashion_cnn_dgc.yaml"
# every benchmark run: in process (same ServerApp/ClientApp as `fedsim run`, no Ray), quiet,
# no checkpoints (the 6.6 MB model and every client's state would be saved each round)
RUN_SETTINGS = ("simulation.backend=inprocess", "output.progress=false", "output.plots=false",
                "checkpoint.every=0")
LEGS = ("latency_s", "download_s", "compute_s", "upload_s")
N_TRAIN = 15_000  # 150 a client at 100 clients
N_TEST = 2_000  # accuracy to +-0.8 points (binomial s.d. at 0.85)


@dataclass(frozen=True)
class Workload:
    """What the benchmarks run on: ``dataset`` names it in the tables, ``overrides`` are
    config ``--set``s (``data.name``, ``data.path``)."""

    dataset: str
    overrides: tuple[str, ...]


def balanced_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` examples, ``n // C`` of each of the C classes of ``y`` (the first
    ``n % C`` classes one more), drawn without replacement with ``seed``.

    Raises ValueError when a class has fewer examples than it must give.
    """
    classes = np.unique(y)
    if n < 1:
        raise ValueError(f"a subset needs n >= 1 examples; got {n}")
    rng = np.random.default_rng(seed)
    picked = []
    for i, c in enumerate(classes):
        want = n // len(classes) + (1 if i < n % len(classes) else 0)
        pool = np.flatnonzero(y == c)
        if want > len(pool):
            raise ValueError(f"class {c} has {len(pool)} examples; the subset needs {want} of it")
        picked.append(rng.choice(pool, size=want, replace=False))
    return np.sort(np.concatenate(picked))


def subset_path(n_train: int, n_test: int, data_dir: Path = DATA_DIR) -> Path:
    return data_dir / f"fashion-mnist-{n_train}-{n_test}.npz"


def write_subset(idx_dir: str | Path, out: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Write a class-balanced ``n_train``/``n_test`` subset of the IDX files in ``idx_dir``
    as a fedsim ``npz`` dataset (uint8 images, int64 labels) at ``out``."""
    from fedsim.data.idx import find_idx_files, read_idx
    from fedsim.data.npz import write_npz

    files = find_idx_files(idx_dir)
    xtr, ytr = read_idx(files["train_images"]), read_idx(files["train_labels"]).astype(np.int64)
    xte, yte = read_idx(files["test_images"]), read_idx(files["test_labels"]).astype(np.int64)
    tr, te = balanced_subset(ytr, n_train, seed), balanced_subset(yte, n_test, seed + 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.npz")
    write_npz(tmp, xtr[tr], ytr[tr], xte[te], yte[te])
    tmp.replace(out)
    return out


def fashion_dir() -> str | None:
    """The first directory holding Fashion-MNIST's IDX files, or None."""
    from fedsim.data.datasets import fashion_mnist_dirs

    return next((d for d in fashion_mnist_dirs() if Path(d).is_dir()), None)


def workload(choice: str = "auto", n_train: int = N_TRAIN, n_test: int = N_TEST,
             data_dir: Path = DATA_DIR) -> Workload:
    """The dataset of the fashion-cnn workload: ``choice`` is ``auto`` (Fashion-MNIST where its
    files exist, else MNIST-5k), ``fashion-mnist`` (an error without the files) or ``mnist5k``."""
    if choice not in ("auto", "fashion-mnist", "mnist5k"):
        raise ValueError(f"dataset choice must be auto, fashion-mnist or mnist5k; got {choice!r}")
    src = fashion_dir() if choice != "mnist5k" else None
    if src is None:
        if choice == "fashion-mnist":
            raise FileNotFoundError("Fashion-MNIST IDX files not found (make data, or apt-get install "
                                    "dataset-fashion-mnist)")
        return Workload("MNIST-5k (Fashion-MNIST not installed)", ("data.name=mnist5k", "data.path=null"))
    path = subset_path(n_train, n_test, data_dir)
    if not path.is_file():
        write_subset(src, path, n_train, n_test)
    return Workload(f"Fashion-MNIST ({n_train:,} train / {n_test:,} test, class-balanced)",
                    ("data.name=npz", f"data.path={path}"))


@dataclass(frozen=True)
class Run:
    """A finished run: its config, directory (metrics.jsonl, clients.jsonl, summary.json),
    summary and per-round rows."""

    cfg: Any
    run_dir: Path
    summary: dict[str, Any]
    rows: list[dict[str, Any]]


def config_key(cfg: Any) -> str:
    """12 hex digits that identify everything a run computes from (all but its name and output)."""
    dump = cfg.model_dump(mode="json", exclude={"name", "output"})
    return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:12]


def run_cached(config: Path, overrides: Sequence[str], out_root: Path = RUNS_DIR) -> Run:
    """Run ``config`` with ``overrides`` into ``out_root/<name>-<config_key>``, or read a
    finished run (summary.json) with the same key back, whatever its name: two benchmarks that
    ask for the same run share it, and the tables can be rebuilt from the saved metrics
    (metrics.jsonl, clients.jsonl, summary.json, and config.json: the full config)."""
    from fedsim.config import check_plugins, load_config
    from fedsim.engine.simulation import simulate
    from fedsim.metrics import read_rows

    cfg = load_config(config, [*RUN_SETTINGS, *overrides])
    check_plugins(cfg)
    key = config_key(cfg)
    done = sorted(d for d in out_root.glob(f"*-{key}") if (d / "summary.json").is_file())
    run_dir = done[0] if done else out_root / f"{cfg.name}-{key}"  # the same run under another name
    if not (run_dir / "summary.json").is_file():
        partial = run_dir.with_name(run_dir.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        simulate(cfg, partial)
        shutil.rmtree(run_dir, ignore_errors=True)
        partial.rename(run_dir)
    saved = run_dir / "config.json"  # what the run computed from, for whoever rebuilds the tables
    if not saved.is_file():
        saved.write_text(json.dumps(cfg.model_dump(mode="json"), indent=1, sort_keys=True))
    summary = json.loads((run_dir / "summary.json").read_text())
    return Run(cfg, run_dir, summary, read_rows(run_dir))


def codec_label(cfg: Any) -> str:
    """The codec and every parameter it was given, e.g. ``topk{density=0.01,values=float16}``."""
    params = ",".join(f"{k}={v}" for k, v in cfg.codec.params.items())
    return f"{cfg.codec.name}{{{params}}}" if params else cfg.codec.name


def describe(cfg: Any, dataset: str) -> str:
    """One line with every setting the runs of a table share (all but the codec and rounds)."""
    from fedsim.data.datasets import load_dataset
    from fedsim.models import build_model

    ds = load_dataset(cfg.data, cfg.seed)
    part = cfg.data.partition
    split = part.kind + (f"({part.alpha})" if part.kind == "dirichlet" else "")
    model = build_model(cfg.model.name, cfg.model.params, ds.input_shape, ds.num_classes, 0)
    n_params = sum(p.numel() for p in model.parameters())
    net = "off" if cfg.network is None else ", ".join(f"{k} {v:g}" for k, v in cfg.network.mix.items())
    t = cfg.train
    return (f"{dataset}; model {cfg.model.name} ({n_params:,} parameters); {cfg.data.num_clients} clients "
            f"({split}), {cfg.clients_per_round} a round; {t.local_epochs} local epoch(s), batch {t.batch_size}, "
            f"lr {t.lr:g}, momentum {t.momentum:g}; strategy {cfg.strategy.name}; seed {cfg.seed}; "
            f"evaluation every {cfg.eval_every} round(s); network mix: {net}")


def client_rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "clients.jsonl").read_text().splitlines() if line.strip()]


def round_legs(run: Run) -> dict[str, float]:
    """What a round's simulated time is made of: the legs (``LEGS``) of the round's last
    arrival (the client the round waited for), averaged over the rounds, recomputed with the
    run's network model from the logged bytes and examples (docs/network-model.md:
    ``T = rtt + 8 bytes_down / down_bps + samples epochs / speed + 8 bytes_up / up_bps``).
    Also ``round_s``, the mean of the logged ``sim_round_s``, which can exceed the legs' sum
    when a mid-round dropout, not an arrival, ends a round."""
    from fedsim.engine.server import Evaluator
    from fedsim.network import ClientWork, NetworkModel

    cfg = run.cfg
    if cfg.network is None:
        raise ValueError(f"{run.run_dir}: run without a network model has no simulated time")
    net = NetworkModel(cfg.network, cfg.seed, cfg.data.num_clients)
    flops = Evaluator(cfg).training_flops_per_sample()
    last: dict[int, dict[str, Any]] = {}
    for c in client_rows(run.run_dir):
        if c["status"] == "ok" and c["arrival_s"] >= last.get(c["round"], {"arrival_s": -1.0})["arrival_s"]:
            last[c["round"]] = c
    legs: dict[str, list[float]] = {k: [] for k in LEGS}
    for rnd, c in sorted(last.items()):
        work = ClientWork(c["bytes_down"], c["bytes_up"], int(c["num_examples"]), cfg.train.local_epochs, flops)
        t = net.client_timing(rnd, c["client"], work)
        for k in LEGS:
            legs[k].append(getattr(t, k))
    out = {k: float(statistics.mean(v)) for k, v in legs.items()}
    out["round_s"] = statistics.mean(r["sim_round_s"] for r in run.rows if r.get("sim_round_s") is not None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=N_TRAIN)
    ap.add_argument("--test", type=int, default=N_TEST)
    args = ap.parse_args()
    w = workload("fashion-mnist", args.train, args.test)
    print(w.dataset, *w.overrides)


if __name__ == "__main__":
    main()
