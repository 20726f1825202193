"""fedsim's ClientApp: the same code in simulation (Ray) and on a real SuperNode.

``query``: reports the node's client id (``partition-id`` from its node config), so
the server can sample clients reproducibly by id rather than by Flower's random
node ids.

``train``: run the client task the strategy named in the config (``fedsim.task``,
default ``train``: local training, the update encoded with the codec; see
:mod:`fedsim.clients.tasks`), with the attack the server assigned if this client is
Byzantine, and reply with the payload and the metrics. Only numpy arrays and scalars
go back.
"""

from __future__ import annotations

import functools
import json

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim.config import AttackConfig, ClientSpec
from fedsim.keys import (
    ATTACK_KEY,
    CONFIG,
    METRICS,
    NUM_EXAMPLES,
    NUM_PARTITIONS,
    PARTITION_ID,
    ROUND_KEY,
    SPEC_KEY,
    TASK_KEY,
    TRAIN_TASK,
)
from fedsim.registry import ATTACKS
from fedsim.wire import make_reply

from .tasks import TASKS, Job, config_integer

app = ClientApp()


def client_id(context: Context) -> int:
    """This node's client (partition) id, from its node config."""
    try:
        return int(context.node_config[PARTITION_ID])
    except KeyError:
        raise RuntimeError(
            f"node config lacks {PARTITION_ID!r} (start the SuperNode with "
            f"--node-config \"{PARTITION_ID}=I {NUM_PARTITIONS}=N\")"
        ) from None


@functools.lru_cache(maxsize=8)
def parse_spec(text: str) -> ClientSpec:
    """The client spec of a message, parsed once per process (it is the same every round)."""
    return ClientSpec.from_json(text)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Discovery: this node's client id and, given the data spec, its number of examples."""
    cid = client_id(context)
    out: dict[str, int | float | list[int] | list[float]] = {
        PARTITION_ID: cid, NUM_PARTITIONS: int(context.node_config.get(NUM_PARTITIONS, 0))}
    cfg = msg.content.config_records.get(CONFIG)
    if cfg is not None and SPEC_KEY in cfg:
        from fedsim.data.datasets import client_sizes

        spec = parse_spec(str(cfg[SPEC_KEY]))
        out[NUM_EXAMPLES] = int(client_sizes(spec.data, spec.seed)[cid])
    return Message(RecordDict({METRICS: MetricRecord(out)}), reply_to=msg)


def train_round(msg: Message, context: Context) -> Message:
    """The body of ``@app.train``: parse the config, run the task the strategy named."""
    cfg = msg.content.config_records[CONFIG]
    spec = parse_spec(str(cfg[SPEC_KEY]))
    attack_cfg = AttackConfig.model_validate_json(str(cfg[ATTACK_KEY])) if ATTACK_KEY in cfg else None
    job = Job(message=msg, context=context, config=cfg, spec=spec, round=config_integer(cfg, ROUND_KEY),
              client=client_id(context),
              attack=ATTACKS.build(attack_cfg.name, attack_cfg.params) if attack_cfg else None)
    task = TASKS.get(str(cfg.get(TASK_KEY, TRAIN_TASK)))
    payload, metrics = task(job)
    return make_reply(msg, payload, metrics)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return train_round(msg, context)


def describe(msg: Message) -> str:  # pragma: no cover - debugging aid
    return json.dumps({k: str(v)[:80] for k, v in msg.content.config_records[CONFIG].items()})
