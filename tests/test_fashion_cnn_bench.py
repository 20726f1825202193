"""The fashion-cnn workload of benchmarks/dgc.py and benchmarks/time_to_accuracy.py
(benchmarks/fashion_cnn.py): the class-balanced subset, the dataset fallback, the cached
runs the two benchmarks share, the round-time breakdown, and the tables' small helpers."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from fedsim.config import load_config
from fedsim.data.idx import write_idx

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    if str(BENCH) not in sys.path:  # dgc.py and time_to_accuracy.py import fashion_cnn, as when run
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = mod  # type: ignore[union-attr]  # dataclasses look their module up
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


@pytest.fixture(scope="module")
def fc():
    return load("fashion_cnn")


def make_idx_dir(d: Path, n_train: int = 40, n_test: int = 20) -> None:
    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    write_idx(d / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8))
    write_idx(d / "train-labels-idx1-ubyte", (np.arange(n_train) % 4).astype(np.uint8))
    write_idx(d / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8))
    write_idx(d / "t10k-labels-idx1-ubyte", (np.arange(n_test) % 4).astype(np.uint8))


# ------------------------------------------------------------------- the subset


def test_balanced_subset_hand_computed(fc):
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    idx = fc.balanced_subset(y, 5, seed=0)  # 5 // 3 = 1 each, the first 5 % 3 = 2 classes one more
    assert np.array_equal(np.bincount(y[idx], minlength=3), [2, 2, 1])
    assert np.all(np.diff(idx) > 0)  # sorted, no repeats
    assert np.array_equal(idx, fc.balanced_subset(y, 5, seed=0))  # seeded


def test_balanced_subset_refuses_a_short_class(fc):
    with pytest.raises(ValueError, match="class 2 has 1 examples; the subset needs 2"):
        fc.balanced_subset(np.array([0, 0, 1, 1, 2]), 6, seed=0)


def test_workload_writes_the_subset_once_and_fedsim_loads_it(fc, tmp_path, monkeypatch):
    src = tmp_path / "idx"
    make_idx_dir(src)
    monkeypatch.setattr(fc, "fashion_dir", lambda: str(src))
    w = fc.workload("auto", n_train=12, n_test=8, data_dir=tmp_path / "data")
    assert w.dataset.startswith("Fashion-MNIST (12 train / 8 test")
    path = tmp_path / "data" / "fashion-mnist-12-8.npz"
    assert w.overrides == ("data.name=npz", f"data.path={path}")
    with np.load(path) as f:
        assert f["x_train"].shape == (12, 28, 28) and f["x_train"].dtype == np.uint8
        assert np.array_equal(np.bincount(f["y_train"]), [3, 3, 3, 3])
        assert np.array_equal(np.bincount(f["y_test"]), [2, 2, 2, 2])
    before = path.stat().st_mtime_ns
    fc.workload("auto", n_train=12, n_test=8, data_dir=tmp_path / "data")
    assert path.stat().st_mtime_ns == before  # reused, not rewritten
    from fedsim.data.datasets import load_dataset

    cfg = load_config(None, [*w.overrides, "data.num_clients=2", "clients_per_round=2"])
    ds = load_dataset(cfg.data, 0)
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (8, 1, 28, 28)


def test_workload_falls_back_to_mnist5k_and_says_so(fc, monkeypatch):
    monkeypatch.setattr(fc, "fashion_dir", lambda: None)
    w = fc.workload("auto")
    assert w.dataset.startswith("MNIST-5k") and "data.name=mnist5k" in w.overrides
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST"):
        fc.workload("fashion-mnist")
    with pytest.raises(ValueError, match="auto, fashion-mnist or mnist5k"):
        fc.workload("cifar")


def test_the_two_configs_differ_only_in_name_and_codec():
    dense = load_config(BENCH.parent / "configs" / "fashion_cnn_dense.yaml").model_dump()
    dgc = load_config(BENCH.parent / "configs" / "fashion_cnn_dgc.yaml").model_dump()
    assert {k for k in dense if dense[k] != dgc[k]} == {"name", "codec"}
    assert dgc["codec"]["params"]["density"] == 0.001 and dgc["codec"]["params"]["warmup_rounds"] == 4


# ------------------------------------------------------------------- cached runs


TINY = """name: tiny
seed: 3
rounds: 2
clients_per_round: 3
data: {name: digits, num_clients: 6, partition: {kind: iid}}
model: {name: logreg}
train: {local_epochs: 1, batch_size: 32, lr: 0.1}
codec: {name: identity}
network: {mix: {4g-phone: 0.5, wifi-phone: 0.5}}
"""


def test_config_key_ignores_name_and_output_only(fc, tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)
    a = fc.config_key(load_config(p, ["name=other", "output.dir=elsewhere"]))
    assert a == fc.config_key(load_config(p))
    assert a != fc.config_key(load_config(p, ["codec.name=fp16"]))


def test_run_cached_reuses_and_round_legs_add_up_to_the_arrivals(fc, tmp_path, monkeypatch):
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)
    run = fc.run_cached(p, [], out_root=tmp_path / "runs")
    assert run.run_dir.name == f"tiny-{fc.config_key(run.cfg)}" and run.summary["rounds"] == 2
    assert [r["round"] for r in run.rows] == [0, 1, 2]
    import fedsim.engine.simulation as sim

    monkeypatch.setattr(sim, "simulate", lambda *a, **k: pytest.fail("a finished run was run again"))
    again = fc.run_cached(p, [], out_root=tmp_path / "runs")
    assert again.summary == run.summary and again.rows == run.rows
    renamed = fc.run_cached(p, ["name=other"], out_root=tmp_path / "runs")  # same run, another name
    assert renamed.run_dir == run.run_dir and (run.run_dir / "config.json").is_file()
    # differential: the legs recomputed from the logged bytes and examples give each round's
    # last arrival time exactly as the run's network model logged it
    last = {}
    for c in fc.client_rows(run.run_dir):
        if c["status"] == "ok":
            last[c["round"]] = max(last.get(c["round"], 0.0), c["arrival_s"])
    legs = fc.round_legs(run)
    assert sum(legs[k] for k in fc.LEGS) == pytest.approx(np.mean(list(last.values())), rel=1e-9)
    assert legs["download_s"] > 0 and legs["upload_s"] > 0 and legs["compute_s"] > 0
    line = fc.describe(run.cfg, "digits")
    assert "6 clients (iid), 3 a round" in line and "logreg (650 parameters)" in line
    assert "4g-phone 0.5, wifi-phone 0.5" in line


# ------------------------------------------------------------------- table helpers


def test_codec_label_names_every_parameter(fc):
    cfg = load_config(BENCH.parent / "configs" / "fashion_cnn_dgc.yaml")
    label = fc.codec_label(cfg)
    for k, v in cfg.codec.params.items():
        assert f"{k}={v}" in label
    assert fc.codec_label(load_config(None, ["codec.name=fp16"])) == "fp16"


def test_parse_codec_and_time_to_target():
    tta = load("time_to_accuracy")
    assert tta.parse_codec("identity", 60) == ("identity", {}, 60)
    assert tta.parse_codec('topk:{"density": 0.01}@120', 60) == ("topk", {"density": 0.01}, 120)
    with pytest.raises(ValueError, match="ROUNDS"):
        tta.parse_codec("fp16@x", 60)
    with pytest.raises(ValueError, match="JSON object"):
        tta.parse_codec("fp16:[1]", 60)
    rows = [{"round": 0, "test_accuracy": 0.1, "sim_time": None},
            {"round": 1, "test_accuracy": 0.5, "sim_time": 10.0},
            {"round": 2, "test_accuracy": None, "sim_time": 21.0},
            {"round": 3, "test_accuracy": 0.81, "sim_time": 33.5},
            {"round": 4, "test_accuracy": 0.9, "sim_time": 40.0}]
    assert tta.time_to_target(rows, 0.8) == (3, 33.5)
    assert tta.time_to_target(rows, 0.95) is None
    specs = tta.fashion_codecs()
    name, params, rounds = tta.parse_codec(specs[4], 60)
    assert name == "dgc" and rounds == 120 and params == json.loads(json.dumps(
        load_config(BENCH.parent / "configs" / "fashion_cnn_dgc.yaml").codec.params))


def test_dgc_runs_listed():
    dgc = load("dgc")
    out = dgc.runs(Path("d.yaml"), Path("g.yaml"), 0, 120, ablations=False)
    assert [label for label, _, _ in out] == ["dense FedAvg", "dgc"]
    out = dgc.runs(Path("d.yaml"), Path("g.yaml"), 200, 120, ablations=True)
    assert [label for label, _, _ in out][2:] == ["dgc -momentum corr.", "dgc -masking", "dgc -warm-up",
                                                 "dgc x200 rounds"]
    assert out[-1][2] == ["rounds=200"]


def test_dgc_density_runs_and_dense_at_a_round(fc):
    dgc = load("dgc")
    out = dgc.runs(Path("d.yaml"), Path("g.yaml"), 0, 120, False, (0.003,), 60)
    assert out[-1] == ("dgc density 0.003", Path("g.yaml"), ["rounds=60", "codec.params.density=0.003"])
    rows = [{"round": 0, "test_accuracy": 0.1, "cum_bytes_up": 0},
            {"round": 1, "test_accuracy": 0.5, "cum_bytes_up": 100},
            {"round": 2, "test_accuracy": None, "cum_bytes_up": 190},
            {"round": 3, "test_accuracy": 0.7, "cum_bytes_up": 300}]
    dense = fc.Run(None, Path("."), {"rounds": 3, "final_accuracy": 0.7, "total_bytes_up": 300}, rows)
    assert dgc.dense_at(dense, 1) == (0.5, 100.0)
    assert dgc.dense_at(dense, 3) == dgc.dense_at(dense, 5) == (0.7, 300.0)
    with pytest.raises(ValueError, match="no evaluation at round 2"):
        dgc.dense_at(dense, 2)
