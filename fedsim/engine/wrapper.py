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
- **validation and decoding** of every reply, on one guarded path: size cap before
  deserialising, keys, dtypes, shapes, finiteness and value ranges
  (:func:`fedsim.codecs.base.validate_payload`), the metrics (only
  :data:`fedsim.wire.REPLY_METRICS` reach the inner strategy; ``num-examples`` must be the
  size the client reported at discovery), then the decoded update (finite, and within
  ``validation.max_update_norm``). *Any* exception while checking, decoding, weighting or
  attacking one client's reply rejects that client (status ``rejected`` and the reason in
  clients.jsonl) and the round goes on without it. An aggregate that is not finite is
  refused: the round keeps the previous model (``model_refused`` in the round's row);
- **byte accounting**: the real payload bytes of every message, up and down.

A strategy that decodes payloads itself (side-information decoding, EF21's g_i, MoNNA's
per-client models) subclasses :class:`fedsim.engine.view.PayloadStrategy`: the wrapper then
hands it a frozen :class:`~fedsim.engine.view.RoundView` of the round (seed, client map,
codec, tensor infos, attackers, evaluator, the update screen), asks it to validate each
payload (``validate(payload, client, view)``) and gives it the validated payloads and
checked metrics by client (``aggregate(view, payloads, metrics)``); it applies any
omniscient attack to what it decodes (``view.forge_vectors`` / ``view.forge_updates``).
Otherwise the inner strategy receives, per client, ``"arrays"`` = the model it was
sent plus the decoded update, and ``"metrics"``, exactly as Flower's strategies expect;
omniscient attacks (:mod:`fedsim.attacks.server`) are applied here to the decoded updates.
Reply checks live in :mod:`fedsim.engine.replies`, the round's counts in
:mod:`fedsim.engine.roundstats`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.attacks.base import ServerAttack
from fedsim.attacks.server import forge_updates
from fedsim.codecs.base import Codec, PayloadError, TensorInfo, payload_nbytes
from fedsim.codecs.model import decode_update, validate_update
from fedsim.config import AttackConfig, ValidationConfig
from fedsim.keys import NUM_EXAMPLES, TRAIN_LOSS
from fedsim.network.model import ClientWork, NetworkModel
from fedsim.registry import ATTACKS
from fedsim.wire import (
    ARRAYS,
    ATTACK_KEY,
    CONFIG,
    METRICS,
    REPLY_METRICS,
    ROUND_KEY,
    SPEC_KEY,
    read_reply,
    record_infos,
    to_record,
    with_content,
)

from .replies import MetricsCheck, check_update, reply_cap
from .roundstats import ClientLog, RoundStats
from .view import PayloadStrategy, RoundView

log = logging.getLogger("fedsim")


def all_finite(arrays: ArrayRecord) -> bool:
    """Whether every float entry of a model record is finite."""
    return all(np.isfinite(a).all() for a in arrays.to_numpy_ndarrays() if a.dtype.kind in "fc")


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
class RoundContext:
    """What the wrapper knows in the current round (a payload-consuming strategy reads it as a :class:`RoundView`)."""

    server_round: int = 0
    codec: Codec | None = None
    seed: int = 0
    node_to_client: dict[int, int] = field(default_factory=dict)
    base: dict[int, list[np.ndarray]] = field(default_factory=dict)  # node -> model it was sent
    infos: list[TensorInfo] = field(default_factory=list)


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
    validation : ValidationConfig, optional
        The update norm bound and the tolerance on ``num-examples`` (defaults: no bound, exact).
    """

    def __init__(self, inner: Strategy, codec: Codec, spec_json: str, seed: int, clients_per_round: int,
                 attackers: dict[int, AttackConfig] | None = None, max_payload_ratio: float = 2.0,
                 network: NetworkModel | None = None, epochs: float = 1.0,
                 flops_per_sample: float | None = None, validation: ValidationConfig | None = None) -> None:
        if clients_per_round < 1:
            raise ValueError(f"clients_per_round must be >= 1; got {clients_per_round}")
        self.inner = inner
        # a strategy that decodes payloads itself takes the RoundView seam (fedsim.engine.view)
        self.payload_inner: PayloadStrategy | None = inner if isinstance(inner, PayloadStrategy) else None
        self.codec = codec
        self.spec_json = spec_json
        self.seed = seed
        self.clients_per_round = clients_per_round
        self.max_payload_ratio = max_payload_ratio
        self.network = network
        self.epochs = epochs
        self.flops_per_sample = flops_per_sample
        self.num_examples: dict[int, int] = {}  # client -> examples (from discovery)
        self.validation = validation or ValidationConfig.model_validate({})  # the defaults
        # the metrics a reply may carry (others are dropped): the documented ones, plus any
        # a payload-consuming strategy declares in ``reply_metrics``
        extra = self.payload_inner.reply_metrics if self.payload_inner is not None else frozenset()
        self.metrics_check = MetricsCheck(frozenset(REPLY_METRICS) | extra, self.num_examples,
                                          self.validation.examples_tolerance)
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
        self._view: RoundView | None = None  # this round's, for the payload-consuming strategy
        self.evaluator: Any = None  # set by the server loop: ArrayRecord -> (loss, accuracy)
        if self.payload_inner is not None:
            self.payload_inner.check(self.view())  # a wrong codec or too many attackers fails now

    # -- set-up ---------------------------------------------------------------------
    def bind_nodes(self, node_to_client: dict[int, int], num_examples: dict[int, int] | None = None) -> None:
        """The node id -> client id map and each client's data size (from discovery)."""
        self.context.node_to_client = dict(node_to_client)
        self._client_to_node = {c: n for n, c in node_to_client.items()}
        self._known = sorted(self._client_to_node)
        self.num_examples = dict(num_examples or {})
        self.metrics_check.num_examples = self.num_examples

    def view(self) -> RoundView:
        """The current round as a payload-consuming strategy sees it (read only)."""
        ctx = self.context
        return RoundView(server_round=ctx.server_round, seed=self.seed,
                         node_to_client=MappingProxyType(ctx.node_to_client), codec=self.codec,
                         infos=tuple(ctx.infos), spec_json=self.spec_json, server_attack=self.server_attack,
                         server_attackers=frozenset(self.server_attackers),
                         client_attackers=frozenset(self.attackers), evaluator=self.evaluator, screen=self.screen)

    def prepare_resume(self, arrays: ArrayRecord) -> None:
        """Before a checkpoint's state is restored: a payload-consuming strategy builds what its
        first round builds (:meth:`fedsim.engine.view.PayloadStrategy.resume`) from the checkpoint's model."""
        if not self.context.infos:
            self.context.infos = record_infos(arrays)
        if self.payload_inner is not None:
            self.payload_inner.resume(self.view(), arrays)

    def available_clients(self, server_round: int, alive: set[int] | None = None) -> list[int]:
        """Clients that can be sampled this round: those that answered discovery and whose
        node is still connected (``alive``: the grid's node ids; a SuperNode that left is
        not sampled again), narrowed by the network model's availability."""
        known = self._known if alive is None else [c for c in self._known if self._client_to_node[c] in alive]
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
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        ctx = self.context
        ctx.server_round = server_round
        ctx.base.clear()
        self.stats = RoundStats()
        self._pending = {}
        # a grid whose nodes never leave (the pool's virtual clients) is not asked each round
        alive = None if getattr(grid, "nodes_fixed", False) else set(grid.get_node_ids())
        chosen = self._choose(server_round, alive=alive)
        subset = SubsetGrid(grid, [self._client_to_node[c] for c in chosen])
        random.seed(int(np.random.SeedSequence([self.seed, server_round, 0xF1]).generate_state(1)[0]))
        if self.payload_inner is not None:
            if not ctx.infos:  # the view handed to configure describes the model it is given
                ctx.infos = record_infos(arrays)
            self._view = self.view()
            msgs = self.payload_inner.configure(self._view, arrays, config, subset)
        else:
            msgs = self.inner.configure_train(server_round, arrays, config, subset)
        out: list[Message] = []
        decoded: dict[int, list[np.ndarray]] = {}  # one deserialisation per distinct record
        for msg in msgs:
            node = msg.metadata.dst_node_id
            client = ctx.node_to_client[node]
            content = RecordDict()
            for key, arec in msg.content.array_records.items():
                content[key] = arec  # read-only: never edited after sending
            for key, mrec in msg.content.metric_records.items():
                content[key] = MetricRecord(dict(mrec))
            for key, crec in msg.content.config_records.items():
                content[key] = ConfigRecord(dict(crec))
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
                    ctx.infos = record_infos(model)
                down = int(sum(b.nbytes for b in base))
            self.stats.bytes_down += down
            self._pending[node] = ClientLog(server_round, client, "no-reply", bytes_down=down)
            out.append(Message(content, dst_node_id=node, message_type=msg.metadata.message_type,
                               group_id=str(server_round)))
        self._sent = out  # the grid sets each one's message_id when it pushes it
        self.stats.sampled = len(out) + sum(1 for e in self._pending.values() if e.status == "dropped-before")
        if self.payload_inner is not None:
            self._view = self.view()  # with the tensor infos of the model sent
        return out

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
        if entry.status != "no-reply":
            log.warning("round %d: a second reply for client %d ignored", entry.round, entry.client)
            return None
        if msg.has_error():
            self.stats.failed_reply(entry, str(msg.error.reason))
            return None
        try:
            payload, metrics = read_reply(msg, reply_cap(self.context.infos, self.max_payload_ratio))
            self.stats.received(entry, payload_nbytes(payload))
            metrics = self.metrics_check(entry.client, metrics)
            if self.payload_inner is not None:  # a payload-consuming strategy owns its wire format
                self.payload_inner.validate(payload, entry.client, self._view or self.view())
            else:
                validate_update(self.codec, payload, self.context.infos)
        except Exception as err:  # noqa: BLE001 - whatever a reply provokes rejects that reply only
            self.stats.reject(entry, err)
            return None
        self.stats.accepted(entry, metrics[NUM_EXAMPLES], metrics[TRAIN_LOSS])
        return msg, (node, entry.client, payload, metrics)

    def reject(self, entry: ClientLog, err: BaseException) -> None:
        """Mark one client's reply rejected, with the reason (:meth:`RoundStats.reject`)."""
        self.stats.reject(entry, err)

    def check_update(self, update: Sequence[np.ndarray]) -> None:
        """A decoded update (one array a tensor, or one flat vector) must be finite, and
        within ``validation.max_update_norm`` if set; PayloadError otherwise
        (:func:`fedsim.engine.replies.check_update`)."""
        check_update(update, self.context.infos, self.validation.max_update_norm)

    def screen(self, client: int, update: Sequence[np.ndarray]) -> bool:
        """:meth:`check_update` for a payload-consuming strategy (``view.screen``): False, and
        the client rejected with the reason, if ``update`` (decoded by the strategy) fails it."""
        try:
            self.check_update(update)
        except PayloadError as err:
            entry = next((e for e in self._pending.values() if e.client == client and e.status == "ok"), None)
            if entry is not None:
                self.reject(entry, err)
            else:
                log.warning("round %d: update of client %d refused: %s", self.context.server_round, client, err)
            return False
        return True

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted = [got for got in map(self.accept, replies) if got is not None]
        if self.network is not None:
            kept = self._settle(server_round)
            accepted = [a for a in accepted if a[1][1] in kept]
        self.stats.clients = sorted(self._pending.values(), key=lambda e: e.client)
        if not accepted:
            log.warning("round %d: no valid reply; the model is unchanged", server_round)
            return None, None
        if self.payload_inner is not None:
            # in reply order: a strategy's sums run in the order its payloads are given
            payloads = {client: payload for _, (_, client, payload, _) in accepted}
            metrics_by_client = {client: m for _, (_, client, _, m) in accepted}
            arrays, metrics = self.payload_inner.aggregate(self._view or self.view(), payloads, metrics_by_client)
        else:
            forwarded = self._decoded_models(server_round, accepted)
            if not forwarded:
                log.warning("round %d: no valid reply; the model is unchanged", server_round)
                return None, None
            arrays, metrics = self.inner.aggregate_train(server_round, forwarded)
        if arrays is not None and not all_finite(arrays):
            self.stats.model_refused = 1
            log.warning("round %d: the aggregated model is not finite: refused, the previous model is kept",
                        server_round)
            return None, metrics
        return arrays, metrics

    def _decoded_models(self, server_round: int, accepted: list[Any]) -> list[Message]:
        """Decode, check and attack the accepted replies; the models (base + update) for the inner strategy."""
        ctx = self.context
        by_client = {e.client: e for e in self._pending.values()}
        deltas: dict[int, list[np.ndarray]] = {}
        for _, (_, client, payload, _) in accepted:
            try:
                deltas[client] = decode_update(self.codec, payload, ctx.infos, self.seed, server_round, client)
                self.check_update(deltas[client])
            except Exception as err:  # noqa: BLE001 - one client's reply, never the round
                deltas.pop(client, None)
                self.reject(by_client[client], err)
        forged = sorted(c for c in deltas if c in self.server_attackers)
        try:
            self.apply_server_attack(server_round, deltas)
        except Exception as err:  # noqa: BLE001 - a failing attack drops the attackers' replies
            for c in forged:
                deltas.pop(c)
                self.reject(by_client[c], err)
        for c in (c for c in forged if c in deltas):
            try:
                self.check_update(deltas[c])
            except PayloadError as err:
                deltas.pop(c)
                self.reject(by_client[c], err)
        used = []
        for msg, (node, client, _, metrics) in accepted:
            if client not in deltas:
                continue
            with np.errstate(over="ignore"):
                full = {i.name: b + d for i, b, d in zip(ctx.infos, ctx.base[node], deltas[client])}
            if not all(np.isfinite(v).all() for v in full.values()):
                self.reject(by_client[client], PayloadError("the model plus this update overflows float32"))
                continue
            used.append((msg, full, metrics))
        # Flower's strategies aggregate the metrics key by key over every reply: hand them
        # the metrics all of this round's replies carry (the required ones always)
        common = set.intersection(*(set(m) for *_, m in used)) if used else set()
        return [with_content(msg, RecordDict({ARRAYS: to_record(full), METRICS: MetricRecord(
                    {k: v for k, v in metrics.items() if k in common})}))
                for msg, full, metrics in used]

    def _settle(self, server_round: int) -> set[int]:
        """Timing of every client that ran; statuses (:meth:`RoundStats.settle`); which updates arrive in time."""
        assert self.network is not None
        ran = {}
        for e in self._pending.values():
            if e.status in ("ok", "rejected"):  # it ran and sent something back
                n = int(e.num_examples) or self.num_examples.get(e.client, 0)
                ran[e.client] = ClientWork(e.bytes_down, e.bytes_up, n, self.epochs, self.flops_per_sample)
        return self.stats.settle(self._pending.values(), self.network.settle(server_round, ran))

    def apply_server_attack(self, server_round: int, deltas: dict[int, list[np.ndarray]]) -> None:
        """Replace the Byzantine clients' decoded updates with forged ones
        (:func:`fedsim.attacks.server.forge_updates`)."""
        deltas.update(forge_updates(self.server_attack, self.server_attackers, deltas,
                                    [i.shape for i in self.context.infos], self.seed, server_round))

    # -- evaluate (server-side evaluation is fedsim's default; federated is delegated) --
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()
