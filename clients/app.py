"""fedsim's ClientApp: the same code in simulation (Ray) and on a real SuperNode.

``query``: reports the node's client id (``partition-id`` from its node config), so
the server can sample clients reproducibly by id rather than by Flower's random
node ids.

``train``: load this client's partition (cached in the worker process), start from
the model in ``arrays``, train locally, form the update (local model minus the model
received), let an attack replace it where the server says this client is Byzantine,
encode it with the codec while restoring and saving the codec's per-client state,
and reply with the payload and the metrics. Only numpy arrays and scalars go back.
"""

from __future__ import annotations

import json
import time

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim.codecs.model import encode_update, flatten, init_states, tensor_infos, unflatten
from fedsim.config import AttackConfig, ClientSpec
from fedsim.registry import ATTACKS, CODECS
from fedsim.state import ContextStore
from fedsim.wire import ARRAYS, ATTACK_KEY, CONFIG, METRICS, ROUND_KEY, SPEC_KEY, make_reply

from .trainer import local_train

app = ClientApp()


def client_id(context: Context) -> int:
    """This node's client (partition) id, from its node config."""
    try:
        return int(context.node_config["partition-id"])
    except KeyError:
        raise RuntimeError(
            "node config lacks 'partition-id' (start the SuperNode with "
            "--node-config \"partition-id=I num-partitions=N\")"
        ) from None


@app.query()
def query(msg: Message, context: Context) -> Message:
    cid = client_id(context)
    num = int(context.node_config.get("num-partitions", 0))
    return Message(RecordDict({METRICS: MetricRecord({"partition-id": cid, "num-partitions": num})}), reply_to=msg)


def train_round(msg: Message, context: Context) -> Message:
    """The body of ``@app.train``; kept importable for tests and benchmarks."""
    cfg = msg.content.config_records[CONFIG]
    spec = ClientSpec.from_json(str(cfg[SPEC_KEY]))
    rnd = int(cfg[ROUND_KEY])  # type: ignore[arg-type]
    cid = client_id(context)
    attack_cfg = AttackConfig.model_validate_json(str(cfg[ATTACK_KEY])) if ATTACK_KEY in cfg else None
    attack = ATTACKS.build(attack_cfg.name, attack_cfg.params) if attack_cfg else None

    record = msg.content.array_records[ARRAYS]
    names = list(record.keys())
    start = [np.asarray(a, dtype=np.float32) for a in record.to_numpy_ndarrays()]
    seed = [spec.seed, rnd, cid]

    t0 = time.perf_counter()
    new, metrics = local_train(spec, names, start, cid, seed, attack)
    update = [n - s for n, s in zip(new, start)]
    if attack is not None:
        update = attack.corrupt(update, np.random.default_rng(seed + [0xA77]))
    t1 = time.perf_counter()

    codec = CODECS.build(spec.codec.name, spec.codec.params)
    infos = tensor_infos([(n, a.shape) for n, a in zip(names, start)])
    store = ContextStore(context)
    saved = store.load()
    states = unflatten(saved, len(infos)) if saved else init_states(codec, infos)
    payload, states = encode_update(codec, update, infos, states, spec.seed, rnd, cid)
    store.save(flatten(states))
    t2 = time.perf_counter()

    metrics.update({"train-s": t1 - t0, "encode-s": t2 - t1})
    return make_reply(msg, payload, metrics)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return train_round(msg, context)


def describe(msg: Message) -> str:  # pragma: no cover - debugging aid
    return json.dumps({k: str(v)[:80] for k, v in msg.content.config_records[CONFIG].items()})
