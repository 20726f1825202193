"""The wrapper that puts any Flower strategy on fedsim's wire.

:class:`FedsimWrapper` is itself a Flower ``Strategy`` around an inner one (Flower's
FedAvg, a plugin, or one of fedsim's). It adds what every strategy needs in fedsim:

- **sampling** by client id with the run seed (Flower's own sampling draws from the
  unseeded global ``random``): the inner strategy sees a grid holding only the
  chosen nodes, and the global ``random`` is seeded per round as well, so an inner
  strategy that subsamples further is still reproducible;
- **fresh messages**: every client gets its own ``RecordDict`` and ``ConfigRecord``
  (never one object shared by all; cf. Flower issue #2704), carrying the client spec,
  the round and, for Byzantine clients, the attack;
- **validation and decoding** of every reply: size cap before deserialising, keys,
  dtypes, shapes, finiteness (:func:`fedsim.codecs.base.validate_payload`); a bad reply
  is rejected with a logged reason and the round goes on without it;
- **byte accounting**: the real payload bytes of every message, up and down.

A strategy that decodes payloads itself (side-information decoding, EF21's g_i)
sets ``consumes_payloads = True``: it then receives the validated raw payload in
``"payload"`` instead of a reconstructed model in ``"arrays"``, and can reach the
codec and the per-client base model through :attr:`FedsimWrapper.context` (it is
handed the wrapper through ``bind_wrapper(wrapper)`` if it defines that). If it defines
``validate_update(payload, client)`` (raising PayloadError), that replaces the codec's
validation. Omniscient attacks (:class:`fedsim.attacks.ServerAttack`) are applied to
the decoded updates here; a payload-consuming strategy applies them itself, from
``wrapper.server_attack`` and ``wrapper.server_attackers``.
Otherwise the inner strategy receives, per client, ``"arrays"`` = the model it was
sent plus the decoded update, and ``"metrics"``, exactly as Flower's strategies expect.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.attacks.base import ServerAttack
from fedsim.codecs.base import Codec, PayloadError, TensorInfo, payload_nbytes
from fedsim.codecs.model import decode_update, tensor_infos, validate_update
from fedsim.config import AttackConfig
from fedsim.network.model import ClientWork, NetworkModel
from fedsim.registry import ATTACKS
from fedsim.wire import ARRAYS, ATTACK_KEY, CONFIG, METRICS, PAYLOAD, ROUND_KEY, SPEC_KEY, read_reply, to_record

log = logging.getLogger("fedsim")


def sample_clients(seed: int, server_round: int, available: Sequence[int], k: int) -> list[int]:
    """``k`` distinct client ids from ``available``, drawn from (seed, round); sorted."""
    if k > len(available):
        raise ValueError(f"cannot sample {k} clients from {len(available)} available")
    rng = np.random.default_rng([seed, server_round, 0x5A3D])
    chosen = rng.choice(np.asarray(sorted(available)), size=k, replace=False)
    return sorted(int(c) for c in chosen)


class SubsetGrid(Grid):
    """A view of a grid that exposes only some nodes (what the inner strategy samples from)."""

    def __init__(self, grid: Grid, node_ids: Sequence[int]) -> None:
        self._grid = grid
        self._nodes = list(node_ids)

    def set_run(self, run: Any) -> None:  # pragma: no cover - delegated
        self._grid.set_run(run)

    @property
    def run(self) -> Any:  # pragma: no cover - delegated
        return self._grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # pragma: no cover
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._nodes)

    def get_nodes(self) -> Iterable[Any]:  # pragma: no cover - delegated
        return [n for n in self._grid.get_nodes() if getattr(n, "node_id", None) in self._nodes]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # pragma: no cover
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # pragma: no cover
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)


@dataclass
class ClientLog:
    """One client's part in one round (a row of clients.jsonl)."""

    round: int
    client: int
    status: str  # "ok", "rejected", "failed", "no-reply"
    bytes_down: int = 0
    bytes_up: int = 0
    num_examples: float = 0.0
    train_loss: float | None = None
    reason: str = ""
    arrival_s: float | None = None  # simulated seconds into the round (network model only)
    profile: str | None = None


@dataclass
class RoundContext:
    """What the wrapper knows in the current round; read by payload-consuming strategies."""

    server_round: int = 0
    codec: Codec | None = None
    seed: int = 0
    node_to_client: dict[int, int] = field(default_factory=dict)
    base: dict[int, list[np.ndarray]] = field(default_factory=dict)  # node -> model it was sent
    infos: list[TensorInfo] = field(default_factory=list)


@dataclass
class RoundStats:
    sampled: int = 0
    replied: int = 0
    rejected: int = 0
    failed: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    clients: list[ClientLog] = field(default_factory=list)
    network: dict[str, Any] = field(default_factory=dict)  # the network model's round summary


class FedsimWrapper(Strategy):
    """Sampling, fresh per-client messages, validation, decoding and byte counts around ``inner``.

    Parameters
    ----------
    inner : Strategy
        Any Flower message-API strategy.
    codec : Codec
        The codec every client encodes its update with.
    spec_json : str
        JSON of the :class:`fedsim.config.ClientSpec` sent to every client.
    seed : int
        The run seed (sampling, dithers).
    clients_per_round : int
        How many clients are sampled each round.
    attackers : dict of int to AttackConfig
        Byzantine client ids and the attack each runs.
    max_payload_ratio : float
        A reply whose serialized size exceeds this times the dense update's is rejected.
    network : NetworkModel, optional
        The device and network model: who is available, who drops, who arrives in time.
    epochs : float
        Local epochs per round (for the network model's compute time).
    flops_per_sample : float, optional
        Training FLOPs per example (for profiles whose speed is in GFLOP/s).
    """

    def __init__(self, inner: Strategy, codec: Codec, spec_json: str, seed: int, clients_per_round: int,
                 attackers: dict[int, AttackConfig] | None = None, max_payload_ratio: float = 2.0,
                 network: NetworkModel | None = None, epochs: float = 1.0,
                 flops_per_sample: float | None = None) -> None:
        if clients_per_round < 1:
            raise ValueError(f"clients_per_round must be >= 1; got {clients_per_round}")
        self.inner = inner
        self.codec = codec
        self.spec_json = spec_json
        self.seed = seed
        self.clients_per_round = clients_per_round
        self.max_payload_ratio = max_payload_ratio
        self.network = network
        self.epochs = epochs
        self.flops_per_sample = flops_per_sample
        self.num_examples: dict[int, int] = {}  # client -> examples (from discovery)
        self.context = RoundContext(codec=codec, seed=seed)
        # Client-side attacks travel in the Byzantine clients' config; omniscient ones
        # (ServerAttack) are applied here, to the decoded updates, before aggregation.
        self.attackers: dict[int, AttackConfig] = {}
        self.server_attack: ServerAttack | None = None
        self.server_attackers: set[int] = set()
        for cid, acfg in (attackers or {}).items():
            attack = ATTACKS.build(acfg.name, acfg.params)
            if isinstance(attack, ServerAttack):
                self.server_attack = self.server_attack or attack
                self.server_attackers.add(cid)
            else:
                self.attackers[cid] = acfg
        self.stats = RoundStats()
        self._pending: dict[int, ClientLog] = {}
        self._sent: list[Message] = []
        self.evaluator: Any = None  # set by the server loop: ArrayRecord -> (loss, accuracy)
        if hasattr(inner, "bind_wrapper"):
            inner.bind_wrapper(self)

    # -- set-up ---------------------------------------------------------------------
    def bind_nodes(self, node_to_client: dict[int, int], num_examples: dict[int, int] | None = None) -> None:
        """The node id -> client id map and each client's data size (from discovery)."""
        self.context.node_to_client = dict(node_to_client)
        self._client_to_node = {c: n for n, c in node_to_client.items()}
        self.num_examples = dict(num_examples or {})

    def available_clients(self, server_round: int, alive: set[int] | None = None) -> list[int]:
        """Clients that can be sampled this round: those that answered discovery and whose
        node is still connected (``alive``: the grid's node ids; a SuperNode that left is
        not sampled again), narrowed by the network model's availability."""
        known = sorted(c for c, n in self._client_to_node.items() if alive is None or n in alive)
        if self.network is None:
            return known
        return sorted(set(known) & set(self.network.available(server_round)))

    def _choose(self, server_round: int, alive: set[int] | None = None) -> list[int]:
        """Sample; with a network model, over-commit and drop some before training."""
        available = self.available_clients(server_round, alive)
        target = min(self.clients_per_round, len(available))
        if self.network is None:
            return sample_clients(self.seed, server_round, available, target)
        n = self.network.num_to_sample(self.clients_per_round, len(available))
        chosen = sample_clients(self.seed, server_round, available, n)
        plan = self.network.plan(server_round, chosen,
                                 keep=self.clients_per_round if self.network.config.overcommit > 0 else None)
        for c in plan.dropped_before:  # never started: no message, no bytes
            self._pending[-1 - c] = ClientLog(server_round, c, "dropped-before")
        return list(plan.send_to)

    # -- train ------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        ctx = self.context
        ctx.server_round = server_round
        ctx.base.clear()
        self.stats = RoundStats()
        self._pending = {}
        chosen = self._choose(server_round, alive=set(grid.get_node_ids()))
        view = SubsetGrid(grid, [self._client_to_node[c] for c in chosen])
        random.seed(int(np.random.SeedSequence([self.seed, server_round, 0xF1]).generate_state(1)[0]))
        out: list[Message] = []
        decoded: dict[int, list[np.ndarray]] = {}  # one deserialisation per distinct record
        for msg in self.inner.configure_train(server_round, arrays, config, view):
            node = msg.metadata.dst_node_id
            client = ctx.node_to_client[node]
            content = RecordDict()
            for key, rec in msg.content.array_records.items():
                content[key] = rec  # read-only: never edited after sending
            for key, rec in msg.content.metric_records.items():
                content[key] = MetricRecord(dict(rec))
            for key, rec in msg.content.config_records.items():
                content[key] = ConfigRecord(dict(rec))
            cfg = content.config_records.get(CONFIG)
            if cfg is None:
                cfg = content[CONFIG] = ConfigRecord()
            cfg[SPEC_KEY] = self.spec_json
            cfg[ROUND_KEY] = server_round
            if client in self.attackers:
                cfg[ATTACK_KEY] = self.attackers[client].model_dump_json()
            model = content.array_records.get(ARRAYS)
            down = 0
            if model is not None:
                if id(model) not in decoded:
                    decoded[id(model)] = [a.numpy() for a in model.values()]
                base = ctx.base[node] = decoded[id(model)]
                if not ctx.infos:
                    ctx.infos = tensor_infos([(k, a.shape) for k, a in zip(model.keys(), base)])
                down = int(sum(b.nbytes for b in base))
            self.stats.bytes_down += down
            self._pending[node] = ClientLog(server_round, client, "no-reply", bytes_down=down)
            out.append(Message(content, dst_node_id=node, message_type=msg.metadata.message_type,
                               group_id=str(server_round)))
        self._sent = out  # the grid sets each one's message_id when it pushes it
        self.stats.sampled = len(out) + sum(1 for e in self._pending.values() if e.status == "dropped-before")
        return out

    def _max_bytes(self) -> int:
        dense = sum(i.numel for i in self.context.infos) * 4
        return int(self.max_payload_ratio * dense) + 64 * 1024 + 256 * len(self.context.infos)

    def accept(self, msg: Message) -> tuple[Message, tuple[int, int, dict[str, np.ndarray], dict[str, float]]] | None:
        """Read and validate one reply; log and count it; None if it is rejected."""
        node = msg.metadata.src_node_id
        entry = self._pending.get(node)
        if entry is None:
            # A reply the SuperLink wrote itself (a node that died: src is the SuperLink)
            # belongs to the client whose instruction it answers.
            sent = {m.metadata.message_id: m.metadata.dst_node_id for m in self._sent if m.metadata.message_id}
            node = sent.get(msg.metadata.reply_to_message_id, node)
            entry = self._pending.get(node)
        if entry is None:
            log.warning("round %d: reply from unexpected node %d ignored", self.context.server_round, node)
            return None
        if msg.has_error():
            entry.status, entry.reason = "failed", str(msg.error.reason)[:300]
            self.stats.failed += 1
            log.warning("round %d: client %d failed: %s", entry.round, entry.client, entry.reason)
            return None
        try:
            payload, metrics = read_reply(msg, self._max_bytes())
            entry.bytes_up = payload_nbytes(payload)
            self.stats.bytes_up += entry.bytes_up
            own = getattr(self.inner, "validate_update", None)
            if own is not None:
                own(payload, entry.client)  # a payload-consuming strategy owns its wire format
            else:
                validate_update(self.codec, payload, self.context.infos)
        except PayloadError as err:
            entry.status, entry.reason = "rejected", str(err)
            self.stats.rejected += 1
            log.warning("round %d: rejected the reply of client %d: %s", entry.round, entry.client, err)
            return None
        entry.status = "ok"
        entry.num_examples = metrics["num-examples"]
        entry.train_loss = metrics["train-loss"]
        self.stats.replied += 1
        return msg, (node, entry.client, payload, metrics)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        ctx = self.context
        accepted = [got for got in map(self.accept, replies) if got is not None]
        if self.network is not None:
            kept = self._settle(server_round)
            accepted = [a for a in accepted if a[1][1] in kept]
        self.stats.clients = sorted(self._pending.values(), key=lambda e: e.client)
        if not accepted:
            log.warning("round %d: no valid reply; the model is unchanged", server_round)
            return None, None
        forwarded: list[Message] = []
        if getattr(self.inner, "consumes_payloads", False):
            for msg, (node, client, payload, metrics) in accepted:
                content = RecordDict({PAYLOAD: to_record(payload), METRICS: MetricRecord(metrics)})
                forwarded.append(Message(content=content, metadata=msg.metadata))
            return self.inner.aggregate_train(server_round, forwarded)
        deltas = {client: decode_update(self.codec, payload, ctx.infos, self.seed, server_round, client)
                  for _, (_, client, payload, _) in accepted}
        self.apply_server_attack(server_round, deltas)
        for msg, (node, client, _, metrics) in accepted:
            full = {i.name: b + d for i, b, d in zip(ctx.infos, ctx.base[node], deltas[client])}
            content = RecordDict({ARRAYS: to_record(full), METRICS: MetricRecord(metrics)})
            forwarded.append(Message(content=content, metadata=msg.metadata))
        return self.inner.aggregate_train(server_round, forwarded)

    def _settle(self, server_round: int) -> set[int]:
        """Timing of every client that ran; statuses; which updates arrive in time."""
        assert self.network is not None
        ran = {}
        for e in self._pending.values():
            if e.status in ("ok", "rejected"):  # it ran and sent something back
                n = int(e.num_examples) or self.num_examples.get(e.client, 0)
                ran[e.client] = ClientWork(e.bytes_down, e.bytes_up, n, self.epochs, self.flops_per_sample)
        outcome = self.network.settle(server_round, ran)
        by_client = {e.client: e for e in self._pending.values()}
        for c in outcome.clients:
            e = by_client[c.client]
            e.arrival_s, e.profile = float(c.event_s), c.profile
            if c.status != "kept":
                if e.status == "ok":
                    self.stats.replied -= 1
                elif e.status == "rejected":
                    self.stats.rejected -= 1
                if c.status == "dropped_mid":  # nothing reached the server
                    self.stats.bytes_up -= e.bytes_up
                    e.bytes_up = 0
                e.status = c.status.replace("_", "-")
        summary = outcome.summary()
        self.stats.network = {
            "sim_round_s": summary["sim_round_s"], "sim_time": summary["sim_time_s"],
            "dropped_before": summary["dropped_before"], "dropped_mid": summary["dropped_mid"],
            "missed_deadline": summary["missed_deadline"], "not_needed": summary["not_needed"],
        }
        return set(outcome.kept)

    def apply_server_attack(self, server_round: int, deltas: dict[int, list[np.ndarray]]) -> None:
        """Replace the Byzantine clients' decoded updates with forged ones (omniscient attacks)."""
        byz = sorted(c for c in deltas if c in self.server_attackers)
        honest = sorted(c for c in deltas if c not in self.server_attackers)
        if self.server_attack is None or not byz or not honest:
            return
        flat = np.stack([np.concatenate([d.ravel() for d in deltas[c]]) for c in honest])
        rng = np.random.default_rng([self.seed, server_round, 0xA77AC])
        forged = self.server_attack.forge(flat, len(byz), rng)
        sizes = [i.numel for i in self.context.infos]
        for c, row in zip(byz, forged):
            parts = np.split(np.asarray(row, dtype=np.float32), np.cumsum(sizes)[:-1])
            deltas[c] = [p.reshape(i.shape) for p, i in zip(parts, self.context.infos)]

    # -- evaluate (server-side evaluation is fedsim's default; federated is delegated) --
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()
