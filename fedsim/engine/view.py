"""The seam between fedsim's engine and a strategy that decodes payloads itself.

Most strategies never see a payload: the wrapper (:mod:`fedsim.engine.wrapper`) decodes
every reply into ``"arrays"`` and hands Flower's ``aggregate_train`` what Flower's own
strategies expect. Some cannot work that way: nested dithering decodes with side
information, EF21-W keeps ``g`` and reads the raw ``c_i``, MoNNA keeps one model per
client. Such a strategy subclasses :class:`PayloadStrategy` and receives the round's
bookkeeping explicitly, in a frozen :class:`RoundView`, instead of reaching into the
engine:

- ``configure(view, arrays, config, grid)``: the round's messages (Flower's
  ``configure_train`` with the view);
- ``validate(payload, client, view)``: raise :class:`~fedsim.codecs.base.PayloadError`
  unless ``payload`` is a well-formed reply of ``client`` this round (the engine rejects
  that client, and the round goes on);
- ``aggregate(view, payloads, metrics)``: the validated payloads and the checked metrics
  by client id -> (new model, aggregated metrics), as Flower's ``aggregate_train``;
- ``check(view)`` (optional): refuse a run it cannot serve (a wrong codec, too many
  attackers), before round 1; ``resume(view, arrays)`` (optional): build what the first
  round builds, before a checkpoint's state is restored into it.

A :class:`PayloadStrategy` is still a Flower ``Strategy``: its ``configure_train`` and
``aggregate_train`` build a view of their own (:meth:`PayloadStrategy.standalone_view`),
so Flower's ``Strategy.start`` runs it without fedsim's wrapper (``tests/test_view.py``).
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.attacks.base import ServerAttack
from fedsim.attacks.server import forge_updates, forge_vectors
from fedsim.codecs.base import Codec, Payload, PayloadError, TensorInfo
from fedsim.codecs.dense import Identity
from fedsim.wire import read_reply, record_infos

from .replies import check_update, reply_cap

log = logging.getLogger("fedsim")

Screen = Callable[[int, Sequence[np.ndarray]], bool]
Evaluate = Callable[[ArrayRecord], tuple[float, float]]
Aggregated = tuple[ArrayRecord | None, MetricRecord | None]


def finite_screen(client: int, update: Sequence[np.ndarray]) -> bool:
    """The screen of a view outside fedsim's wrapper: True when every value of ``update`` is finite."""
    try:
        check_update(update)
    except PayloadError as err:
        log.warning("update of client %d refused: %s", client, err)
        return False
    return True


@dataclass(frozen=True)
class RoundView:
    """What a payload-consuming strategy may read about the current round (read only).

    Attributes
    ----------
    server_round : int
        The round (1, 2, ...).
    seed : int
        The run seed: every client's dither and every server-side draw derive from
        (seed, round, client).
    node_to_client : mapping of int to int
        Flower node id -> fedsim client id, for every client of the run.
    codec : Codec
        The run's codec (what clients encode with unless a message names another).
    infos : tuple of TensorInfo
        The model's tensors (names and shapes), in order.
    spec_json : str
        JSON of the :class:`fedsim.config.ClientSpec` every client is sent (data, model, train).
    server_attack : ServerAttack or None
        The omniscient attack of the run, applied by the strategy to its decoded vectors
        (:meth:`forge_vectors`, :meth:`forge_updates`).
    server_attackers : frozenset of int
        The clients whose vectors :attr:`server_attack` forges.
    client_attackers : frozenset of int
        The clients that attack on their own side (their messages carry the attack).
    evaluator : callable or None
        ``evaluator(arrays) -> (loss, accuracy)`` on the held-out test set (per-client models).
    screen : callable
        ``screen(client, update) -> bool``: a decoded update must pass it to be used; one it
        refuses (not finite, beyond ``validation.max_update_norm``) rejects that client.
    """

    server_round: int
    seed: int
    node_to_client: Mapping[int, int]
    codec: Codec
    infos: tuple[TensorInfo, ...] = ()
    spec_json: str = ""
    server_attack: ServerAttack | None = None
    server_attackers: frozenset[int] = frozenset()
    client_attackers: frozenset[int] = frozenset()
    evaluator: Evaluate | None = field(default=None, compare=False)
    screen: Screen = field(default=finite_screen, compare=False)

    @property
    def clients(self) -> list[int]:
        """Every client id of the run, ascending."""
        return sorted(self.node_to_client.values())

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [i.shape for i in self.infos]

    @property
    def attackers(self) -> frozenset[int]:
        """Every Byzantine client, server-forged or attacking on its own side."""
        return self.server_attackers | self.client_attackers

    def forge_vectors(self, vectors: Mapping[int, np.ndarray], dtype: npt.DTypeLike) -> dict[int, np.ndarray]:
        """The server attack's forged flat vectors for the attackers among ``vectors``
        (:func:`fedsim.attacks.server.forge_vectors`)."""
        return forge_vectors(self.server_attack, self.server_attackers, vectors, self.seed, self.server_round, dtype)

    def forge_updates(self, updates: Mapping[int, Sequence[np.ndarray]]) -> dict[int, list[np.ndarray]]:
        """The same for updates held one array per tensor of :attr:`infos`
        (:func:`fedsim.attacks.server.forge_updates`)."""
        return forge_updates(self.server_attack, self.server_attackers, updates, self.shapes, self.seed,
                             self.server_round)


class PayloadStrategy(Strategy):
    """A Flower ``Strategy`` that receives the clients' validated raw payloads (module docstring).

    Subclasses implement :meth:`configure`, :meth:`validate` and :meth:`aggregate` (and
    Flower's ``configure_evaluate`` / ``aggregate_evaluate`` / ``summary``); they may
    override :meth:`check`, :meth:`resume`, :attr:`reply_metrics` and :meth:`standalone_view`.
    """

    reply_metrics: ClassVar[frozenset[str]] = frozenset()
    """Reply metrics this strategy reads beyond :data:`fedsim.keys.REPLY_METRICS` (others are dropped)."""

    _standalone: RoundView | None = None  # the view of the round under way outside fedsim's wrapper

    def check(self, view: RoundView) -> None:
        """Raise ValueError, saying why, if this strategy cannot serve the run ``view`` describes
        (called once, before round 1; ``view.node_to_client`` may still be empty)."""

    def resume(self, view: RoundView, arrays: ArrayRecord) -> None:
        """Build what the first round builds from ``arrays`` (a checkpoint's model) before the
        checkpoint's state is restored into it; nothing by default."""

    @abstractmethod
    def configure(self, view: RoundView, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """The round's messages, one per node of ``grid`` (Flower's ``configure_train``)."""

    @abstractmethod
    def validate(self, payload: Payload, client: int, view: RoundView) -> None:
        """Raise PayloadError unless ``payload`` is a well-formed reply of ``client`` this round."""

    @abstractmethod
    def aggregate(self, view: RoundView, payloads: Mapping[int, Payload],
                  metrics: Mapping[int, Mapping[str, float]]) -> Aggregated:
        """The new model and the round's metrics from the validated ``payloads`` (client -> payload)."""

    # -- Flower's Strategy, for Strategy.start without fedsim's wrapper ----------------------
    def standalone_view(self, server_round: int, arrays: ArrayRecord, grid: Grid) -> RoundView:
        """The view outside fedsim's wrapper: client id = node id, seed 0, no codec
        (:class:`fedsim.codecs.dense.Identity`), no attack. Override to change them."""
        return RoundView(server_round, 0, {n: n for n in grid.get_node_ids()}, Identity(),
                         tuple(record_infos(arrays)))

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._standalone = view = self.standalone_view(server_round, arrays, grid)
        return self.configure(view, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Aggregated:
        view = self._standalone
        if view is None or view.server_round != server_round:
            raise RuntimeError(f"aggregate_train({server_round}) without configure_train of that round")
        payloads: dict[int, Payload] = {}
        metrics: dict[int, dict[str, float]] = {}
        for msg in replies:
            client = view.node_to_client.get(msg.metadata.src_node_id)
            try:
                if client is None:
                    raise PayloadError(f"reply from unknown node {msg.metadata.src_node_id}")
                payload, m = read_reply(msg, reply_cap(view.infos))
                self.validate(payload, client, view)
            except PayloadError as err:
                log.warning("round %d: reply refused: %s", server_round, err)
                continue
            payloads[client], metrics[client] = payload, m
        if not payloads:
            return None, None
        return self.aggregate(view, payloads, metrics)

