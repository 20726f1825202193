"""The edge client path: trainer choice, the npz dataset, the numpy trainer against torch,
and the whole ClientApp import chain with torch, Ray, scikit-learn and mlxtend blocked."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fedsim.clients import numpy_trainer as nt
from fedsim.clients.trainer import choose_backend, local_train, requested_backend
from fedsim.config import ClientSpec, load_config
from fedsim.data.npz import read_npz, write_npz

ROOT = Path(__file__).resolve().parents[1]


def _digits_like(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Separable 8x8 'images': class c lights up row c (uint8), plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, size=n)
    x = rng.integers(0, 60, size=(n, 8, 8)).astype(np.uint8)
    x[np.arange(n), y] += 180
    return x, y


@pytest.fixture
def npz_file(tmp_path):
    x, y = _digits_like()
    return write_npz(tmp_path / "d.npz", x[:200], y[:200], x[200:], y[200:])


def _spec(path, *overrides):
    cfg = load_config(None, ["data.name=npz", f"data.path={path}", "data.num_clients=4",
                             "data.partition.kind=iid", "clients_per_round=2", "model.name=logreg",
                             "train.batch_size=1000", "train.local_epochs=3", "train.lr=0.5",
                             "train.momentum=0.5", "train.weight_decay=0.01", *overrides])
    return ClientSpec.from_config(cfg)


# --------------------------------------------------------------------------- npz


def test_npz_round_trip_scales_bytes_and_adds_channel(npz_file):
    ds = read_npz(npz_file)
    x, y = _digits_like()
    assert ds.x_train.shape == (200, 1, 8, 8) and ds.x_train.dtype == np.float32
    np.testing.assert_allclose(ds.x_train[:, 0], x[:200] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, y[200:])
    assert ds.num_classes == 4 and ds.y_train.dtype == np.int64


def test_npz_without_test_split_is_split_stratified(tmp_path):
    x, y = _digits_like(100)
    ds = read_npz(write_npz(tmp_path / "a.npz", x.reshape(100, 64).astype(np.float32) / 255, y), 0.25, seed=3)
    assert len(ds.y_train) + len(ds.y_test) == 100 and ds.x_train.shape[1:] == (64,)
    for c in range(4):  # each class split in the same proportion (up to rounding)
        assert abs((ds.y_test == c).sum() - 0.25 * (y == c).sum()) <= 0.5


@pytest.mark.parametrize("arrays, msg", [
    ({"x_train": np.zeros((3, 4))}, "missing keys"),
    ({"x_train": np.zeros((3, 4)), "y_train": np.zeros(3, int), "extra": np.zeros(1)}, "unknown keys"),
    ({"x_train": np.zeros((3, 4)), "y_train": np.zeros(2, int)}, "3 integer labels"),
    ({"x_train": np.zeros((3, 4)), "y_train": np.zeros(3, int), "x_test": np.zeros((1, 4))}, "both x_test"),
    ({"x_train": np.full((3, 4), np.nan), "y_train": np.zeros(3, int)}, "finite"),
    ({"x_train": np.zeros((3, 4)), "y_train": np.array([0, 1, 2]), "num_classes": np.array(2)}, "num_classes=2"),
    ({"x_train": np.array([[{}], [{}]], dtype=object), "y_train": np.zeros(2, int)}, "pickle"),
])
def test_npz_rejects(tmp_path, arrays, msg):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # object arrays are pickled by savez: read_npz must refuse them
    with pytest.raises(ValueError, match=msg):
        read_npz(path)


def test_npz_missing_file_and_path(tmp_path):
    from fedsim.registry import DATASETS

    with pytest.raises(FileNotFoundError, match="data.path"):
        DATASETS.get("npz")(path=None)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_npz(tmp_path / "nope.npz")


# --------------------------------------------------------------------------- choice


def test_requested_backend(monkeypatch):
    monkeypatch.delenv("FEDSIM_TRAINER", raising=False)
    assert requested_backend({}) == "auto"
    monkeypatch.setenv("FEDSIM_TRAINER", "numpy")
    assert requested_backend({}) == "numpy"
    assert requested_backend({"trainer": "Torch"}) == "torch"  # the node config wins
    with pytest.raises(ValueError, match="one of auto, torch, numpy"):
        requested_backend({"trainer": "jax"})


def test_choose_backend():
    pytest.importorskip("torch", reason="the torch branch needs torch")
    assert choose_backend("auto", "cnn") == "torch"
    assert choose_backend("auto", "mlp") == "torch"
    assert choose_backend("numpy", "mlp") == "numpy"
    with pytest.raises(ValueError, match="model 'cnn' needs torch"):
        choose_backend("numpy", "cnn")


@pytest.mark.parametrize("model", ["logreg", "mlp"])
def test_numpy_and_torch_trainers_agree_full_batch(npz_file, model):
    """Differential: full batches (order-free), momentum and weight decay, 3 epochs."""
    pytest.importorskip("torch", reason="the differential test needs torch")
    spec = _spec(npz_file, f"model.name={model}", "model.params={hidden: 8}" if model == "mlp" else "model.params={}")
    start = nt.init_params(model, 64, 4, seed=1, hidden=8)
    names, arrays = list(start), list(start.values())
    a, ma = local_train(spec, names, arrays, client=1, seed=[0, 1, 1], backend="numpy")
    b, mb = local_train(spec, names, arrays, client=1, seed=[0, 1, 1], backend="torch")
    for name, u, v in zip(names, a, b):
        np.testing.assert_allclose(u, v, rtol=0, atol=2e-5, err_msg=name)
        assert u.dtype == np.float32
    assert ma["num-examples"] == mb["num-examples"] == 50 and ma["steps"] == mb["steps"] == 3
    assert (ma["numpy-trainer"], mb["numpy-trainer"]) == (1.0, 0.0)
    assert ma["train-loss"] == pytest.approx(mb["train-loss"], abs=1e-5)


def test_numpy_trainer_refuses_tensors_of_another_model(npz_file):
    spec = _spec(npz_file, "model.name=mlp")
    start = nt.init_params("logreg", 64, 4, seed=1)
    with pytest.raises(ValueError, match="logreg tensors"):
        local_train(spec, list(start), list(start.values()), client=0, seed=[0, 1, 0], backend="numpy")


def test_inprocess_run_with_numpy_clients(tmp_path, npz_file):
    """Every node on the numpy trainer (node config), server on torch: the run learns."""
    from fedsim.clients.app import app
    from fedsim.engine.inprocess import InProcessGrid
    from fedsim.engine.server import run_server

    cfg = load_config(None, ["data.name=npz", f"data.path={npz_file}", "data.num_clients=4",
                             "data.partition.kind=iid", "clients_per_round=4", "rounds=3", "model.name=logreg",
                             "train.lr=0.5", "train.batch_size=10", "codec.name=fp16", "output.progress=false",
                             "output.plots=false"])
    pytest.importorskip("torch", reason="the server evaluates with torch")
    nodes = {i: {"partition-id": i, "num-partitions": 4, "trainer": "numpy"} for i in range(4)}
    summary = run_server(InProcessGrid(app, 4, node_config=nodes), cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["replied"] for r in rows[1:]] == [4, 4, 4]
    assert summary["final_accuracy"] > 0.9 > rows[0]["test_accuracy"]


# --------------------------------------------------------------------------- edge import chain

BLOCKED = ("torch", "ray", "sklearn", "mlxtend", "scipy", "matplotlib")

EDGE_SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys
    BLOCKED = set(sys.argv[1].split(","))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: not on an edge device")

    sys.meta_path.insert(0, Block())
    import numpy as np
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity
    from fedsim.clients.app import app
    from fedsim.wire import CONFIG, ROUND_KEY, SPEC_KEY, read_payload, to_record

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    spec_json, out = sys.argv[2], sys.argv[3]
    start = dict(np.load(sys.argv[4]))
    ctx = Context(run_id=1, node_id=7, node_config={"partition-id": 1, "num-partitions": 4},
                  state=RecordDict(), run_config={})
    content = RecordDict({"arrays": to_record(start),
                          CONFIG: ConfigRecord({SPEC_KEY: spec_json, ROUND_KEY: 1})})
    msg = Message(content, dst_node_id=7, message_type="train", group_id="1")
    msg.metadata.__dict__["_message_id"] = "m1"
    reply = app(msg, ctx)
    assert not reply.has_error(), reply.error
    np.savez(out, **read_payload(reply.content.array_records["payload"], 1 << 30))
    metrics = dict(reply.content.metric_records["metrics"])
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({"metrics": metrics, "leaked": leaked}))
""")


def test_clientapp_trains_a_round_with_torch_ray_sklearn_blocked(tmp_path, npz_file):
    """A subprocess that cannot import torch/Ray/sklearn/mlxtend runs the real ClientApp
    (``fedsim.clients.app``) on a train message; its reply decodes, on this side, to the
    update the torch trainer computes here."""
    from fedsim.codecs.model import decode_update, tensor_infos
    from fedsim.registry import CODECS

    spec = _spec(npz_file, "codec.name=identity")
    start = nt.init_params("logreg", 64, 4, seed=2)
    np.savez(tmp_path / "start.npz", **start)
    script = tmp_path / "edge.py"
    script.write_text(EDGE_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), ",".join(BLOCKED), spec.to_json(),
                           str(tmp_path / "payload.npz"), str(tmp_path / "start.npz")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["leaked"] == [] and report["metrics"]["numpy-trainer"] == 1.0
    with np.load(tmp_path / "payload.npz", allow_pickle=False) as f:
        payload = {k: f[k] for k in f.files}
    infos = tensor_infos([(k, v.shape) for k, v in start.items()])
    delta = decode_update(CODECS.build("identity"), payload, infos, spec.seed, 1, 1)
    pytest.importorskip("torch", reason="the comparison trains with torch here")
    ref, _ = local_train(spec, list(start), list(start.values()), client=1, seed=[spec.seed, 1, 1],
                         backend="torch")
    for d, r, s in zip(delta, ref, start.values()):
        np.testing.assert_allclose(d, r - s, rtol=0, atol=2e-5)
