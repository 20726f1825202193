"""Bits per coordinate on the wire vs final accuracy: dense, DQSG, NDQSG (nested), QSGD.

MNIST-5k, the CNN, 100 clients, run on the in-process backend (the real ClientApp, Flower
serialization, no Ray), in one of four settings (``--setting``):

``noniid``    ``configs/ndqsg_mnist.yaml``: Dirichlet(0.5), 10 clients a round (the hard case);
``noniid20``  the same with 20 clients a round;
``iid``       ``configs/ndqsg_mnist_iid.yaml``: IID partition, 20 clients a round;
``iid50``     the IID config with 50 clients a round (more side information per reference);
``iid10big``  the IID config with 10 clients of 400 examples, all 10 every round, batch 100:
              large clients and large batches, whose updates agree far more (``--probe``).

Each row overrides only the strategy and the codec, with every parameter spelled out (a row
does not depend on the config's own strategy/codec parameters). Bits per coordinate count
every reply the server pulled (rejected ones included), three ways, from the *real*
serialised replies (:class:`MeteredGrid`):

``payload``  the codec's arrays (symbols and bucket scales): what the run's metrics count;
``npy``      the ``ArrayRecord``'s arrays as Flower serialises them, NPY headers included
             (:func:`fedsim.wire.record_nbytes`);
``wire``     every object of the reply message that Flower 1.39 deflates and pushes: the
             NPY files (``ArrayChunk``), each ``Array``'s JSON metadata, the ``ArrayRecord``'s
             key -> object-id map, the metrics record, the ``RecordDict`` and the message's own
             metadata (:func:`flower_nbytes`). Only gRPC/HTTP2/TLS framing is left out.

    .venv/bin/python benchmarks/quantization.py [--setting noniid] [--rounds 20] [--seed 0]
        [--only "DQSG M=3" "a=0.4"] [--set key=value ...]
    .venv/bin/python benchmarks/quantization.py --probe [--setting iid] [--only ROW ...]
        # how close real updates are, and each row's aggregate quantization error on them
    .venv/bin/python benchmarks/quantization.py --layouts
        # reply bytes, one array per tensor field vs per field vs per reply, for 3 models

Goal (issue 5): NDQSG <= 0.6x the bits of DQSG (M=3) at equal accuracy (here: final test
accuracy within 1 point of DQSG's). Issue 14: the same on the wire, and against the
no-side-information DQSG of the nearest level count.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.task_identity import TaskIdentity

from fedsim.engine.inprocess import InProcessGrid
from fedsim.packed import pack
from fedsim.wire import METRICS, PACKED, PAYLOAD, make_reply, read_payload, record_nbytes, to_record

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ndqsg_mnist.yaml"
IID = ROOT / "configs" / "ndqsg_mnist_iid.yaml"

# setting -> (config, extra overrides, what the header line says)
SETTINGS: dict[str, tuple[Path, list[str], str]] = {
    "noniid": (CONFIG, [], "100 clients, Dirichlet 0.5, 10 a round"),
    "noniid20": (CONFIG, ["clients_per_round=20"], "100 clients, Dirichlet 0.5, 20 a round"),
    "iid": (IID, [], "100 clients, IID, 20 a round"),
    "iid50": (IID, ["clients_per_round=50"], "100 clients, IID, 50 a round"),
    "iid10big": (IID, ["data.num_clients=10", "clients_per_round=10", "train.batch_size=100"],
                 "IID, 10 clients of 400 examples, all 10 a round, batch 100"),
}


# ------------------------------------------------------------------ bytes on the wire


def flower_nbytes(obj: Any) -> int:
    """Bytes of every object Flower 1.39 deflates and pushes for ``obj`` (a message or record).

    A message travels as a tree of inflatable objects (``Message`` -> ``RecordDict`` ->
    records -> ``Array`` -> ``ArrayChunk``), each pushed once per object id
    (``flwr.supernode.runtime.run_clientapp``: ``push_objects(get_all_nested_objects(message))``),
    so this is the sum of ``len(deflate())`` over those objects. Not counted: the gRPC framing,
    the object-id tree sent ahead of them (``get_object_tree``) and each push's object id.
    """
    return sum(len(o.deflate()) for o in get_all_nested_objects(obj).values())


@dataclass(frozen=True)
class ReplyBytes:
    """One reply's size three ways (see the module docstring)."""

    payload: int  # the codec's arrays: sum of ndarray.nbytes
    npy: int  # fedsim.wire.record_nbytes of the payload ArrayRecord (NPY headers included)
    wire: int  # every Flower object of the reply message (flower_nbytes)
    one: int  # ``wire`` with the payload sent as one raw uint8 array (layout "reply": no key index)
    tensor: int  # ``wire`` with one array per tensor and field (layout "tensor": fedsim before packing)


def reply_bytes(reply: Message) -> ReplyBytes:
    """Measure a reply that carries a payload ArrayRecord (``one``: rebuilt as one array)."""
    rec = reply.content.array_records[PAYLOAD]
    arrays = read_payload(rec, 1 << 40)
    wire = flower_nbytes(reply)
    # the record is one subtree of the message (its parent holds only its fixed-length id)
    rest = wire - flower_nbytes(rec)
    one = rest + flower_nbytes(to_record(layout_arrays(arrays, "reply")))
    tensor = rest + flower_nbytes(to_record(layout_arrays(arrays, "tensor")))
    return ReplyBytes(sum(a.nbytes for a in arrays.values()), record_nbytes(rec), wire, one, tensor)


def real_reply(payload: Mapping[str, np.ndarray], metrics: Mapping[str, float], layout: str = "tensor") -> Message:
    """A reply answering a bare train instruction, its payload in ``layout``: ``"packed"`` is
    what a client sends (``fedsim.wire.make_reply``), the others rebuild it with more arrays."""
    try:
        TaskIdentity.run_id  # noqa: B018 - raises outside a Flower app process
    except RuntimeError:  # as InProcessGrid does: what a ServerApp process has set
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    instruction = Message(RecordDict(), dst_node_id=1007, message_type="train")
    if layout == "packed":
        return make_reply(instruction, payload, metrics)
    content = RecordDict({PAYLOAD: to_record(layout_arrays(payload, layout)), METRICS: MetricRecord(dict(metrics))})
    return Message(content, reply_to=instruction)


REPLY_METRICS = {"num-examples": 40.0, "train-loss": 0.5, "steps": 6.0, "train-s": 0.1, "encode-s": 0.01}
"""What the torch client reports beside its payload (the values do not change the sizes)."""


class MeteredGrid(InProcessGrid):
    """An :class:`InProcessGrid` that measures every reply with a payload it hands the server."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.replies: list[ReplyBytes] = []

    def pull_messages(self, message_ids: Any) -> list[Message]:
        out = list(super().pull_messages(message_ids))
        for msg in out:
            if not msg.has_error() and PAYLOAD in msg.content.array_records:
                self.replies.append(reply_bytes(msg))
        return out


def bits(nbytes: Sequence[int], coords: int) -> float:
    """``8 * sum(bytes) / (replies * coordinates)``."""
    return 8.0 * sum(nbytes) / (len(nbytes) * coords)


LAYOUTS = ("tensor", "field", "packed", "reply")


def layout_arrays(payload: Mapping[str, np.ndarray], layout: str) -> dict[str, np.ndarray]:
    """The payload's arrays in one of three layouts (the same bytes, fewer arrays):

    ``tensor``  today's: one array per tensor and field (``"3.sym"``);
    ``field``   one array per field, the tensors' arrays concatenated in tensor order
                (``"sym"``, ``"scale"``: each keeps its dtype, so the server's exact dtype
                check still applies);
    ``packed``  what fedsim sends since: :func:`fedsim.packed.pack` (one ``uint8`` array,
                a JSON index of keys, dtypes and shapes, then the bytes);
    ``reply``   one ``uint8`` array, every array's raw bytes concatenated in key order (the
                floor: ``packed`` without its index).
    """
    if layout == "tensor":
        return dict(payload)
    if layout == "field":
        fields: dict[str, list[np.ndarray]] = {}
        for key, arr in payload.items():
            fields.setdefault(key.split(".", 1)[1], []).append(np.ravel(arr))
        return {f: np.concatenate(parts) for f, parts in fields.items()}
    if layout == "packed":
        return {PACKED: pack(payload)}
    if layout == "reply":
        raw = b"".join(np.ascontiguousarray(a).tobytes() for a in payload.values())
        return {"payload": np.frombuffer(raw, dtype=np.uint8)}
    raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")


def layout_wire(payload: Mapping[str, np.ndarray], layout: str) -> int:
    """A real reply's bytes on the wire (:func:`flower_nbytes`) with ``payload`` laid out as ``layout``."""
    return flower_nbytes(real_reply(payload, REPLY_METRICS, layout))


LAYOUT_MODELS = ("logreg", "cnn", "cnn-fedavg")
LAYOUT_CODECS: dict[str, tuple[str, dict[str, Any]]] = {
    "dense fp32": ("identity", {}),
    "DQSG M=3": ("dqsg", {"levels": 3, "bucket": 512}),
    "NDQSG rho=3": ("ndqsg", {"m1": 3, "m2": 1, "alpha": 0.4, "estimator": "unbiased", "bucket": 512}),
    "DQSG M=1": ("dqsg", {"levels": 1, "bucket": 512}),
}


def model_infos(name: str, params: Mapping[str, Any] | None = None, input_shape: tuple[int, ...] = (1, 28, 28),
                num_classes: int = 10) -> list[Any]:
    """TensorInfo of each tensor of model ``name`` (default: on MNIST, 1x28x28, 10 classes)."""
    from fedsim.codecs.model import tensor_infos
    from fedsim.models import build_model

    model = build_model(name, dict(params or {}), input_shape, num_classes, 0)
    return tensor_infos([(k, tuple(v.shape)) for k, v in model.state_dict().items()])


def encoded_payload(codec: Any, update: Sequence[np.ndarray], infos: Sequence[Any], seed: int, rnd: int,
                    client: int) -> dict[str, np.ndarray]:
    """The flat payload a client sends for ``update`` (fresh codec state)."""
    from fedsim.codecs.model import encode_update, init_states

    payload, _ = encode_update(codec, update, infos, init_states(codec, infos), seed, rnd, client)
    return payload


def layouts() -> None:
    """Print one reply's bytes in each layout for each model and codec (a seeded N(0, 1e-4) update)."""
    from fedsim.codecs.base import payload_nbytes
    from fedsim.registry import CODECS

    print(f"{'model':10} {'tensors':>7} {'coords':>9} {'codec':12} {'payload B':>9} {'npy B':>7} "
          + " ".join(f"{'wire B ' + lay:>13}" for lay in LAYOUTS)
          + f" {'saved B':>7} {'npy hdr %':>9} {'wire ovh %':>10} {'1-array %':>9}")
    for name in LAYOUT_MODELS:
        infos = model_infos(name)
        coords = sum(i.numel for i in infos)
        rng = np.random.default_rng(0)
        update = [rng.normal(0, 1e-2, i.shape).astype(np.float32) for i in infos]
        for label, (codec_name, params) in LAYOUT_CODECS.items():
            payload = encoded_payload(CODECS.build(codec_name, params), update, infos, 0, 1, 0)
            size, npy = payload_nbytes(payload), record_nbytes(to_record(payload))
            wire = {lay: layout_wire(payload, lay) for lay in LAYOUTS}
            print(f"{name:10} {len(infos):7d} {coords:9d} {label:12} {size:9d} {npy:7d} "
                  + " ".join(f"{wire[lay]:13d}" for lay in LAYOUTS)
                  + f" {wire['tensor'] - wire['reply']:7d} {100 * (npy - size) / size:9.2f}"
                  f" {100 * (wire['tensor'] - size) / size:10.2f} {100 * (wire['reply'] - size) / size:9.2f}")
    print("wire B: every Flower object of a real reply (metrics and message metadata included); saved B: "
          "per tensor minus one array a reply; %: bytes beyond the payload, relative to it")


# ------------------------------------------------------------------ the rows


def _fedavg(codec: str, params: str) -> list[str]:
    return ["strategy.name=fedavg", "strategy.params={}", f"codec.name={codec}", f"codec.params={params}"]


def _nested(refs: int, threshold: float, alpha: str = "1.0", estimator: str = "mmse", bucket: int = 512,
            m1: int = 3, m2: int = 1) -> list[str]:
    return ["strategy.name=ndqsg-nested",
            f"strategy.params={{reference_clients: {refs}, client_failure_threshold: {threshold}, "
            "stale_failure_threshold: 0.01}",
            "codec.name=ndqsg",
            f"codec.params={{m1: {m1}, m2: {m2}, alpha: {alpha}, estimator: {estimator}, bucket: {bucket}}}"]


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
    "NDQSG (1 ref) a=1 unb": _nested(1, 1.0, "1.0", "unbiased"),
    "NDQSG (1 ref) a=1 unb b4096": _nested(1, 1.0, "1.0", "unbiased", 4096),
    "NDQSG (2 ref) a=1 unb b4096": _nested(2, 1.0, "1.0", "unbiased", 4096),
    "NDQSG rho=2 (1 ref) a=0.5 unb": _nested(1, 1.0, "0.5", "unbiased", 512, 2, 1),
    "NDQSG rho=2 (1 ref) a=0.5 b4096": _nested(1, 1.0, "0.5", "unbiased", 4096, 2, 1),
    "NDQSG rho=2 (1 ref) a=1 b4096": _nested(1, 1.0, "1.0", "unbiased", 4096, 2, 1),
    "DQSG M=3 b4096": _fedavg("dqsg", "{levels: 3, bucket: 4096}"),
    "DQSG M=1": _fedavg("dqsg", "{levels: 1, bucket: 512}"),
    "DQSG M=1 b4096": _fedavg("dqsg", "{levels: 1, bucket: 4096}"),
    "QSGD s=3": _fedavg("qsgd", "{levels: 3, bucket: 512}"),
    "QSGD s=1": _fedavg("qsgd", "{levels: 1, bucket: 512}"),
    "QSGD s=1 b4096": _fedavg("qsgd", "{levels: 1, bucket: 4096}"),
}
DEFAULT_ROWS = ["dense (fp32)", "DQSG M=3", "NDQSG M1=3 M2=1 (2 ref)", "NDQSG M1=3 M2=1 (1 ref)",
                "NDQSG (1 ref) accept", "NDQSG (1 ref) a=0.4 unb", "NDQSG (1 ref) a=1/3 unb", "DQSG M=1",
                "QSGD s=3", "QSGD s=1"]
PROBE_ROWS = ["DQSG M=3", "NDQSG (1 ref) a=1 unb", "NDQSG (2 ref) a=0.4 unb", "NDQSG (1 ref) a=0.4 unb",
              "NDQSG (1 ref) a=1/3 unb", "NDQSG (1 ref) a=1 unb b4096", "NDQSG (1 ref) a=0.4 b4096",
              "NDQSG rho=2 (1 ref) a=0.5 unb", "NDQSG rho=2 (1 ref) a=1 b4096", "DQSG M=1", "DQSG M=1 b4096",
              "QSGD s=1"]


def select(only: Sequence[str] | None, default: Sequence[str]) -> list[str]:
    """Row names: a full name in ``only`` picks that row, any other entry every row containing it
    (case-insensitive); no ``only``: ``default``."""
    if not only:
        return list(default)
    exact = set(only) & set(METHODS)
    loose = [s.lower() for s in only if s not in exact]
    return [n for n in METHODS if n in exact or any(s in n.lower() for s in loose)]


def run(name: str, overrides: list[str], rounds: int, seed: int, config: Path | None = CONFIG) -> dict[str, Any]:
    """One row: run ``config`` with ``overrides`` on a :class:`MeteredGrid`; bits three ways, accuracy."""
    from fedsim.clients.app import app
    from fedsim.config import load_config
    from fedsim.data.datasets import load_dataset
    from fedsim.engine.server import run_server
    from fedsim.metrics import read_rows

    cfg = load_config(config, [f"rounds={rounds}", f"seed={seed}", "output.progress=false", "output.plots=false",
                               "simulation.backend=inprocess", *overrides])
    grid = MeteredGrid(app, cfg.data.num_clients)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = run_server(grid, cfg, Path(tmp))
        wall = time.perf_counter() - t0
        rows = read_rows(tmp)
    ds = load_dataset(cfg.data, cfg.seed)
    coords = sum(i.numel for i in model_infos(cfg.model.name, cfg.model.params, ds.input_shape, ds.num_classes))
    replies = sum(r.get("replied", 0) + r.get("rejected", 0) for r in rows[1:])
    if len(grid.replies) != replies or sum(r.payload for r in grid.replies) != rows[-1]["cum_bytes_up"]:
        raise RuntimeError(f"{name}: metered {len(grid.replies)} replies / {sum(r.payload for r in grid.replies)} B, "
                           f"the metrics {replies} / {rows[-1]['cum_bytes_up']} B")
    out: dict[str, Any] = {
        "method": name,
        "bits": bits([r.payload for r in grid.replies], coords),
        "npy": bits([r.npy for r in grid.replies], coords),
        "wire": bits([r.wire for r in grid.replies], coords),
        "one": bits([r.one for r in grid.replies], coords),
        "tensor": bits([r.tensor for r in grid.replies], coords),
        "acc": summary["final_accuracy"],
        "best": summary["best_accuracy"],
        "curve": [r.get("test_accuracy") for r in rows],  # index = round (0: the initial model)
        "wall": wall,
    }
    nested = [r for r in rows[1:] if r.get("nested_clients")]
    if nested:
        out["ref_bits"] = next((r["reference_bits_per_coord"] for r in nested if r["reference_bits_per_coord"]), None)
        out["nested_bits"] = nested[0]["nested_bits_per_coord"]
        out["used"] = sum(r["nested_accepted"] for r in nested) / sum(r["nested_clients"] for r in nested)
        out["fail"] = sum(r["nested_failure_fraction"] or 0.0 for r in nested) / len(nested)
    return out


# ------------------------------------------------------------------ the probe


Update = list[np.ndarray]


def decoded_mean(cfg: Any, updates: Mapping[int, Update], weights: Mapping[int, float], infos: Sequence[Any],
                 rnd: int) -> tuple[Update, list[ReplyBytes]]:
    """What the server of ``cfg``'s strategy and codec aggregates from these true updates.

    Every client encodes its update with its group's codec (seed ``cfg.seed``, round ``rnd``);
    the server decodes as the strategy does (``ndqsg-nested``: references with DQSG, their
    mean the side information of the nested clients, decoded in client order with the running
    mean, every client kept) and takes the FedAvg mean. Returns it and each real reply's size.
    """
    from fedsim.codecs.model import decode_update
    from fedsim.registry import CODECS
    from fedsim.strategies.nested_dithering import decode_nested_group, reference_codec, reference_group, weighted_mean

    codec = CODECS.build(cfg.codec.name, cfg.codec.params)
    clients = sorted(updates)
    refs = (reference_group(clients, int(cfg.strategy.params["reference_clients"]), cfg.seed, rnd)
            if cfg.strategy.name == "ndqsg-nested" else clients)
    plain = reference_codec(codec) if cfg.strategy.name == "ndqsg-nested" else codec
    payloads = {c: encoded_payload(plain if c in refs else codec, updates[c], infos, cfg.seed, rnd, c)
                for c in clients}
    decoded = {c: decode_update(plain, payloads[c], infos, cfg.seed, rnd, c) for c in refs}
    if cfg.strategy.name == "ndqsg-nested":
        side = [np.mean([decoded[c][t] for c in refs], axis=0) for t in range(len(infos))]
        nested = decode_nested_group(codec, {c: payloads[c] for c in clients if c not in refs}, infos, cfg.seed,
                                     rnd, side, len(refs), 1.0)
        decoded.update(nested.accepted)
    mean = weighted_mean([decoded[c] for c in clients], [weights[c] for c in clients])
    return mean, [reply_bytes(real_reply(payloads[c], REPLY_METRICS)) for c in clients]


def aggregate_error(decoded: Update, true: Update) -> float:
    """``|mean decoded - mean true|^2 / |mean true|^2`` over the whole model."""
    num = sum(float(((d.astype(np.float64) - t) ** 2).sum()) for d, t in zip(decoded, true))
    return num / sum(float((t.astype(np.float64) ** 2).sum()) for t in true)


def probe(config: Path, overrides: list[str], seed: int, methods: Sequence[str],
          rounds: tuple[int, ...] = (1, 5, 15)) -> None:
    """How close real client updates are to each other, and what each row makes of them.

    Runs dense FedAvg (the torch trainer, no codec) and, at each of ``rounds``, takes the
    updates ``g_i`` of the sampled clients and prints, averaged over the clients,
    ``|g_i - y_i|^2 / |g_i|^2`` with ``y_i`` the mean of the *other* clients (the best side
    information a round can give), the same per coordinate against the coarse cell of
    NDQSG M1=3, rho=3, alpha=1 (``rms(g - y) / (rho * s)`` with ``s = max|g| / M1`` per bucket
    of 512: the nested code decodes a coordinate when ``|g - y| < rho*s/2`` about), and the
    leave-one-out failure estimate (:func:`fedsim.codecs.nested.estimate_failures_loo`) for
    alpha = 1 and 0.4, before any repair. Then, for each row of ``methods``, the aggregate
    error ``|mean decoded - mean true|^2 / |mean true|^2`` of that row's codec and decoder
    on the same updates (:func:`decoded_mean`), beside its bits a coordinate on the wire.
    """
    from fedsim.clients import torch_trainer as tt
    from fedsim.codecs.nested import estimate_failures_loo
    from fedsim.config import load_config
    from fedsim.data.datasets import load_dataset, load_partition
    from fedsim.engine.wrapper import sample_clients
    from fedsim.models import build_model

    cfg = load_config(config, [f"seed={seed}", *overrides])
    rows = {m: load_config(config, [f"seed={seed}", *overrides, *METHODS[m]]) for m in methods}
    tt.one_thread()
    ds = load_dataset(cfg.data, cfg.seed)
    model = build_model(cfg.model.name, cfg.model.params, ds.input_shape, ds.num_classes, cfg.seed)
    infos = model_infos(cfg.model.name, cfg.model.params, ds.input_shape, ds.num_classes)
    coords = sum(i.numel for i in infos)
    w, t = tt.get_weights(model), cfg.train
    sizes = [a.size for a in w]
    errors: dict[str, list[float]] = {m: [] for m in methods}
    wire: dict[str, list[int]] = {m: [] for m in methods}
    print(f"{'round':>5} {'|g-y|^2/|g|^2':>13} {'rms(g-y)/cell':>13} {'LOO fail a=1':>12} {'LOO fail a=0.4':>14}")
    for rnd in range(1, max(rounds) + 1):
        clients = sample_clients(cfg.seed, rnd, list(range(cfg.data.num_clients)), cfg.clients_per_round)
        deltas, n = [], []
        for c in clients:
            x, y = load_partition(cfg.data, cfg.seed, c)
            tt.set_weights(model, w)
            m = tt.train(model, x, y, epochs=t.local_epochs, batch_size=t.batch_size, lr=t.lr,
                         momentum=t.momentum, weight_decay=t.weight_decay, seed=rnd * 100_003 + c)
            deltas.append([(a - b).astype(np.float32) for a, b in zip(tt.get_weights(model), w)])
            n.append(m["num-examples"])
        share = np.asarray(n) / sum(n)
        true = [sum(f * d[k].astype(np.float64) for f, d in zip(share, deltas)) for k in range(len(w))]
        if rnd in rounds:
            flat = np.stack([np.concatenate([a.ravel() for a in d]) for d in deltas]).astype(np.float64)
            others = (flat.sum(0) - flat) / (len(flat) - 1)
            ratio = float(np.mean(((flat - others) ** 2).sum(1) / (flat ** 2).sum(1)))
            cell = float(np.mean([coarse_cell_ratio(f, o, 3, 3, 512) for f, o in zip(flat, others)]))
            fail = [float(np.average([estimate_failures_loo([d[k] for d in deltas], 3, 3, a, 512)
                                      for k in range(len(w))], weights=sizes)) for a in (1.0, 0.4)]
            print(f"{rnd:5d} {ratio:13.2f} {cell:13.3f} {fail[0]:12.3f} {fail[1]:14.3f}", flush=True)
            for name, row in rows.items():
                mean, replies = decoded_mean(row, dict(zip(clients, deltas)), dict(zip(clients, n)), infos, rnd)
                errors[name].append(aggregate_error(mean, true))
                wire[name] += [r.wire for r in replies]
        w = [(b + d).astype(np.float32) for b, d in zip(w, true)]
    print(f"\naggregate error |mean decoded - mean true|^2 / |mean true|^2 at rounds {', '.join(map(str, rounds))}")
    print(f"{'method':32} {'wire bits':>9} " + " ".join(f"{'round ' + str(r):>9}" for r in rounds))
    for name in methods:
        print(f"{name:32} {bits(wire[name], coords):9.3f} " + " ".join(f"{e:9.4f}" for e in errors[name]))


def coarse_cell_ratio(g: np.ndarray, y: np.ndarray, m1: int, rho: int, bucket: int) -> float:
    """``rms(g - y) / mean(rho * s)`` over the buckets of ``g``, ``s = max|g| / m1`` per bucket.

    The nested code (alpha = 1) decodes a coordinate right when ``|g - y|`` is under about half
    the coarse cell ``rho * s``; a ratio well under 1/2 is the paper's regime.
    """
    pad = (-g.size) % bucket
    gb = np.pad(np.abs(g), (0, pad)).reshape(-1, bucket)
    cell = rho * gb.max(axis=1) / m1
    return float(np.sqrt(np.mean((g - y) ** 2)) / cell.mean())


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="noniid")
    ap.add_argument("--only", nargs="*", help="substrings of method names to run (default: the main rows)")
    ap.add_argument("--set", nargs="*", default=[], dest="extra", help="extra config overrides for every row")
    ap.add_argument("--probe", action="store_true",
                    help="instead of the table: how close real client updates are (dense FedAvg, rounds 1, 5, 15) "
                         "and each row's aggregate quantization error on them")
    ap.add_argument("--at", type=int, default=None, help="also print the test accuracy after this round")
    ap.add_argument("--probe-rounds", type=int, nargs="+", default=[1, 5, 15], help="the rounds --probe looks at")
    ap.add_argument("--layouts", action="store_true",
                    help="instead of the table: reply bytes per model and codec in three array layouts")
    args = ap.parse_args(argv)
    import logging

    logging.getLogger("flwr").setLevel(logging.ERROR)
    logging.getLogger("fedsim").setLevel(logging.ERROR)
    if args.layouts:
        layouts()
        return
    config, setting, what = SETTINGS[args.setting]
    extra = f", {' '.join(args.extra)}" if args.extra else ""
    if args.probe:
        print(f"MNIST-5k, CNN, {what}{extra}, seed {args.seed}: client updates of a dense FedAvg run")
        probe(config, [*setting, *args.extra], args.seed, select(args.only, PROBE_ROWS), tuple(args.probe_rounds))
        return
    results = []
    for name in select(args.only, DEFAULT_ROWS):
        results.append(run(name, [*setting, *args.extra, *METHODS[name]], args.rounds, args.seed, config))
        print(f"  done: {name} ({results[-1]['wall']:.0f} s)", file=sys.stderr, flush=True)
    print_table(results, f"MNIST-5k, CNN, {what}{extra}, {args.rounds} rounds, seed {args.seed}, inprocess", args.at)


def print_table(results: Sequence[Mapping[str, Any]], title: str, at: int | None = None) -> None:
    """The table: bits three ways, the wire bits relative to DQSG M=3's, accuracy, nested stats."""
    dq = next((r for r in results if r["method"] == "DQSG M=3"), None)
    print(f"\n{title}")
    print(f"{'method':31} {'payload':>7} {'npy':>6} {'wire':>6} {'per-key':>7} {'1-array':>7} {'x DQSG':>6} "
          + (f"{'acc@' + str(at):>8} " if at else "")
          + f"{'final acc':>9} {'vs DQSG':>7} {'best acc':>8} {'ref bits':>8} {'nest bits':>9} {'used':>5} "
          f"{'detect fail':>11} {'wall s':>6}")
    for r in results:
        ratio = f"{r['wire'] / dq['wire']:.3f}" if dq else "-"
        gap = f"{100 * (r['acc'] - dq['acc']):+.1f}" if dq else "-"
        nest = (f"{r['ref_bits']:8.3f} {r['nested_bits']:9.3f} {r['used']:5.2f} {r['fail']:11.4f}"
                if "used" in r else f"{'-':>8} {'-':>9} {'-':>5} {'-':>11}")
        mid = f"{r['curve'][at]:8.3f} " if at and at < len(r["curve"]) else (f"{'-':>8} " if at else "")
        per_key = r.get("tensor", float("nan"))  # rows cached before packing lack it
        print(f"{r['method']:31} {r['bits']:7.3f} {r['npy']:6.3f} {r['wire']:6.3f} {per_key:7.3f} {r['one']:7.3f} "
              f"{ratio:>6} {mid}"
              f"{r['acc']:9.3f} {gap:>7} {r['best']:8.3f} {nest} {r['wall']:6.0f}")
    print("bits a coordinate: payload = codec arrays (the metrics' bytes_up); npy = + NPY headers "
          "(fedsim.wire.record_nbytes); wire = every Flower object of the reply (fedsim's packed payload, "
          "fedsim.packed); per-key = wire with one array per tensor field (fedsim before packing); 1-array = wire "
          "with the payload as one raw array, no index (the floor); x DQSG on the wire")


if __name__ == "__main__":
    main()
