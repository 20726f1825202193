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
import math
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
from fedsim.config import AttackConfig, ValidationConfig
from fedsim.network.model import ClientWork, NetworkModel
from fedsim.registry import ATTACKS
from fedsim.wire import (
    ARRAYS,
    ATTACK_KEY,
    CONFIG,
    METRICS,
    PAYLOAD,
    REPLY_METRICS,
    ROUND_KEY,
    SPEC_KEY,
    read_reply,
    to_record,
)

log = logging.getLogger("fedsim")


def all_finite(arrays: ArrayRecord) -> bool:
    """Whether every float entry of a model record is finite."""
    return all(np.isfinite(a).all() for a in arrays.to_numpy_ndarrays() if a.dtype.kind in "fc")


def _squared_norm(a: np.ndarray) -> float:
    """``sum a**2`` of a finite array: a float32 dot (BLAS), redone in float64 if it overflowed."""
    x = np.ascontiguousarray(a).reshape(-1)
    with np.errstate(over="ignore"):
        sq = float(np.dot(x, x))
    if not math.isfinite(sq):  # beyond ~3.4e38: only huge updates pay for the float64 copy
        x64 = x.astype(np.float64)
        sq = float(np.dot(x64, x64))
    return sq


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
    model_refused: int = 0  # 1 when the aggregate was not finite and the previous model was kept
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
        self.codec = codec
        self.spec_json = spec_json
        self.seed = seed
        self.clients_per_round = clients_per_round
        self.max_payload_ratio = max_payload_ratio
        self.network = network
        self.epochs = epochs
        self.flops_per_sample = flops_per_sample
        self.num_examples: dict[int, int] = {}  # client -> examples (from discovery)
        self.validation = validation or ValidationConfig()
        # the metrics a reply may carry (others are dropped): the documented ones, plus any
        # a plugin strategy declares in ``reply_metrics``
        self.reply_metrics = frozenset(REPLY_METRICS) | frozenset(getattr(inner, "reply_metrics", ()))
        self._noted: set[str] = set()  # what was logged once
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
        self._known = sorted(self._client_to_node)
        self.num_examples = dict(num_examples or {})

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
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        ctx = self.context
        ctx.server_round = server_round
        ctx.base.clear()
        self.stats = RoundStats()
        self._pending = {}
        # a grid whose nodes never leave (the pool's virtual clients) is not asked each round
        alive = None if getattr(grid, "nodes_fixed", False) else set(grid.get_node_ids())
        chosen = self._choose(server_round, alive=alive)
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
        if entry.status != "no-reply":
            log.warning("round %d: a second reply for client %d ignored", entry.round, entry.client)
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
            metrics = self.checked_metrics(entry.client, metrics)
            own = getattr(self.inner, "validate_update", None)
            if own is not None:
                own(payload, entry.client)  # a payload-consuming strategy owns its wire format
            else:
                validate_update(self.codec, payload, self.context.infos)
        except Exception as err:  # noqa: BLE001 - whatever a reply provokes rejects that reply only
            self.reject(entry, err)
            return None
        entry.status = "ok"
        entry.num_examples = metrics["num-examples"]
        entry.train_loss = metrics["train-loss"]
        self.stats.replied += 1
        return msg, (node, entry.client, payload, metrics)

    def reject(self, entry: ClientLog, err: BaseException) -> None:
        """Mark one client's reply rejected, with the reason (a PayloadError's message, else the exception's)."""
        reason = str(err) if isinstance(err, PayloadError) else f"{type(err).__name__}: {err}"
        if entry.status == "ok":
            self.stats.replied -= 1
        entry.status, entry.reason = "rejected", reason[:300]
        self.stats.rejected += 1
        log.warning("round %d: rejected the reply of client %d: %s", entry.round, entry.client, entry.reason)

    def _note_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._noted and len(self._noted) < 256:
            self._noted.add(key)
            log.warning(message, *args)

    def trusted_examples(self, client: int, claimed: float) -> float:
        """The FedAvg weight of ``client``: its size from discovery, which the claim must match.

        ``|claimed - known| <= validation.examples_tolerance * known + 1/2`` (the count travels
        as a float), else PayloadError. A client whose size is unknown (it reported none at
        discovery) gets the median of the known sizes, or 1 if none is known: a reply never
        sets its own weight.
        """
        known = self.num_examples.get(client)
        if known is None:
            sizes = list(self.num_examples.values())
            weight = float(np.median(sizes)) if sizes else 1.0
            self._note_once("size", "client %d (and maybe others) reported no size at discovery: such replies "
                            "weigh %g (%s), whatever num-examples they claim (logged once)", client, weight,
                            "the median known size" if sizes else "no size is known: equal weights")
            return weight
        if not abs(claimed - known) <= self.validation.examples_tolerance * known + 0.5:
            raise PayloadError(f"metric 'num-examples' is {claimed:g}, but client {client} has {known} examples "
                               f"(reported at discovery)")
        return float(known)

    def checked_metrics(self, client: int, metrics: dict[str, float]) -> dict[str, float]:
        """The documented, finite metrics of a reply, with ``num-examples`` checked (:meth:`trusted_examples`)."""
        out = {}
        for key, value in metrics.items():
            if key not in self.reply_metrics:
                self._note_once(f"metric:{key}", "reply metric %r is not one fedsim knows (%s): dropped, "
                                "this and later (logged once)", key, ", ".join(sorted(self.reply_metrics)))
            elif math.isfinite(value):
                out[key] = value
        out["num-examples"] = self.trusted_examples(client, metrics["num-examples"])
        return out

    def check_update(self, update: Sequence[np.ndarray]) -> None:
        """A decoded update (one array a tensor, or one flat vector) must be finite, and
        within ``validation.max_update_norm`` if set; PayloadError otherwise."""
        names = [i.name for i in self.context.infos] if len(update) == len(self.context.infos) else None
        for k, d in enumerate(update):
            if not np.isfinite(d).all():
                raise PayloadError(f"{names[k] if names else 'update'}: the decoded update is not finite")
        bound = self.validation.max_update_norm
        if bound is not None:
            norm = math.sqrt(sum(_squared_norm(d) for d in update))
            if norm > bound:
                raise PayloadError(f"update norm {norm:.6g} exceeds validation.max_update_norm = {bound:g}")

    def screen(self, client: int, update: Sequence[np.ndarray]) -> bool:
        """:meth:`check_update` for a payload-consuming strategy: False, and the client
        rejected with the reason, if ``update`` (decoded by the strategy) fails it."""
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

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted = [got for got in map(self.accept, replies) if got is not None]
        if self.network is not None:
            kept = self._settle(server_round)
            accepted = [a for a in accepted if a[1][1] in kept]
        self.stats.clients = sorted(self._pending.values(), key=lambda e: e.client)
        if getattr(self.inner, "consumes_payloads", False):
            forwarded = [Message(content=RecordDict({PAYLOAD: to_record(payload), METRICS: MetricRecord(metrics)}),
                                 metadata=msg.metadata) for msg, (_, _, payload, metrics) in accepted]
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
        return [Message(content=RecordDict({ARRAYS: to_record(full), METRICS: MetricRecord(
                    {k: v for k, v in metrics.items() if k in common})}), metadata=msg.metadata)
                for msg, full, metrics in used]

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
