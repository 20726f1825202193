"""MoNNA (and NNA): per-client models mixed by nearest-neighbour averaging on the server.

Farhadkhani, Guerraoui, Gupta, Hoang, Pinot, Stephan, "Robust Collaborative Learning with
Linear Gradient Overhead", ICML 2023 (PMLR 202), https://arxiv.org/abs/2209.10931
(Algorithm 1). NNA is MoNNA with ``beta = 0``.

MoNNA is decentralised: every worker ``i`` keeps its own model ``theta_i``. In fedsim the
server holds every ``theta_i`` and does the mixing for everyone (it receives every
half-step model), so each round is::

    server -> i : theta_i, lr_t, beta          (one message per client, its own model)
    i          : m_i = beta m_i + (1-beta) g_i;  h_i = theta_i - lr_t m_i   (clients/monna.py)
    i -> server : h_i - theta_i, through the run's codec
    server      : theta_i = NNA_i(R_i)  for every client       (fedsim.robust.nna.nna_mix)
    lr_t        = lr / (t / lr_decay + 1)      (t = round - 1; constant without lr_decay)

Which neighbours NNA averages is ``rule`` (see :mod:`fedsim.robust.nna`):
``"reference"`` (the paper's code): client ``i`` holds ``n - f`` of the ``n`` vectors (its
own, every Byzantine one, the rest drawn per round from the run seed) and averages the
``n - 2f`` nearest its own; ``"byzfl"`` (ByzFL's ``MoNNA(f)``): it holds all ``n`` and
averages the ``n - f`` nearest.

Every client takes part in every round (``clients_per_round`` must equal
``data.num_clients``). Omniscient attacks (``view.server_attack``) replace the
Byzantine clients' half-step models after decoding, from the honest ones (the paper attacks
the half-step models); client-side attacks (label flipping, Gaussian, own sign flip) run in
the client task. The server cannot tell client-side attackers apart, so it mixes for them
too; under ``"reference"`` their vectors reach every honest client (the worst case).

What the strategy reports each round (``round_metrics``): the test accuracy of the honest
clients' models, mean / min / max (``honest_accuracy_*``), and their mean test loss. The
model it returns (what the server loop evaluates as ``test_accuracy``) is the mean of the
honest clients' models.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedsim.codecs.base import Payload
from fedsim.codecs.model import decode_update, model_vector, split_vector, validate_update
from fedsim.engine.view import PayloadStrategy, RoundView
from fedsim.keys import (
    ARRAYS,
    CONFIG,
    MONNA_BETA_KEY,
    MONNA_LR_KEY,
    MONNA_STEPS_KEY,
    MONNA_TASK,
    NUM_EXAMPLES,
    TASK_KEY,
    TRAIN_LOSS,
)
from fedsim.registry import STRATEGIES
from fedsim.robust.monna import check_beta, lr_schedule
from fedsim.robust.nna import RULES, Rule, check_honest_majority, check_rule, nna_mix, received_sets
from fedsim.wire import to_record

from .server_evaluated import ServerEvaluatedStrategy

log = logging.getLogger("fedsim")



def mix_round(
    vectors: np.ndarray,
    f: int,
    *,
    rule: Rule,
    forged: Sequence[int] = (),
    attackers: Sequence[int] = (),
    rng: np.random.Generator | None = None,
) -> tuple[list[int], np.ndarray]:
    """One MoNNA mixing step on the server: ``theta_i = NNA_i(R_i)`` for every row that
    needs a model back.

    Parameters
    ----------
    vectors : (n, d) array
        The half-step models of the round, one row per client (forged rows already forged).
    f : int
        Byzantine clients tolerated (``2f < n``).
    rule : {"reference", "byzfl"}
        Which neighbours are averaged (:func:`fedsim.robust.nna.nna_mix`).
    forged : sequence of int
        Rows forged on the server by an omniscient attack: no model goes back to them.
    attackers : sequence of int
        Rows of clients that attack on the client side: mixed around their own row like
        everyone (the server cannot tell them apart).
    rng : numpy Generator
        Draws the received sets under ``"reference"``.

    Returns
    -------
    pivots, thetas
        The rows mixed for (every row not in ``forged``, ascending) and their new models
        ``(len(pivots), d)``. Under ``"reference"`` every Byzantine row (forged or
        attacker) reaches every honest pivot; an attacker's own set holds the forged rows
        and random others.
    """
    n = np.asarray(vectors).shape[0]
    check_honest_majority(n, f, "MoNNA")
    rule = check_rule(rule)
    forged_set, attack_set = set(forged), set(attackers) - set(forged)
    pivots = [i for i in range(n) if i not in forged_set]
    if rule == "byzfl" or not pivots:
        return pivots, nna_mix(vectors, f, rule=rule, pivots=pivots)
    honest = [i for i in pivots if i not in attack_set]
    byz = sorted(forged_set | attack_set)
    if len(byz) > f:
        raise ValueError(f"MoNNA tolerates f={f} Byzantine clients; {len(byz)} rows are Byzantine")
    mask = np.zeros((len(pivots), n), dtype=bool)
    at = {p: r for r, p in enumerate(pivots)}
    if honest:  # honest pivots hear every Byzantine row: theta_i = mean of n-2f nearest of R_i
        mask[[at[p] for p in honest]] = received_sets(n, f, honest, byzantine=byz, rng=rng)
    mine = sorted(attack_set)
    if mine:
        mask[[at[p] for p in mine]] = received_sets(n, f, mine, byzantine=sorted(forged_set), rng=rng)
    return pivots, nna_mix(vectors, f, rule=rule, pivots=pivots, received=mask)


def honest_summary(scores: Sequence[tuple[float, float]]) -> dict[str, float]:
    """``(loss, accuracy)`` of every honest model -> mean / min / max accuracy, mean loss."""
    if not scores:
        return {}
    loss = np.array([s[0] for s in scores])
    acc = np.array([s[1] for s in scores])
    return {"honest_accuracy_mean": float(acc.mean()), "honest_accuracy_min": float(acc.min()),
            "honest_accuracy_max": float(acc.max()), "honest_loss_mean": float(loss.mean())}


class MoNNA(ServerEvaluatedStrategy, PayloadStrategy):
    """MoNNA: per-client models, Polyak momentum on the clients, NNA mixing on the server.

    Parameters
    ----------
    f : int
        Byzantine clients tolerated; every round needs ``2f < n`` (n = number of clients).
    lr : float
        Initial step ``lr0`` of the half step ``h = theta - lr_t m`` (paper, MNIST: 0.75).
    beta : float
        Momentum in EMA form, ``0 <= beta < 1`` (paper: 0.99; 0 is NNA).
    lr_decay : float, optional
        ``tau`` of ``lr_t = lr0 / (t / tau + 1)``; None: constant step.
    rule : {"reference", "byzfl"}
        Which neighbours NNA averages (module docstring).
    local_steps : int
        Momentum steps a client takes before replying; 1 is the paper's algorithm.
    evaluate_every : int
        Evaluate every honest model on the test set every this many rounds (and in round
        1); 0 never. The honest models' accuracy is the paper's metric.

    A :class:`~fedsim.engine.view.PayloadStrategy`: it decodes the half-step models itself,
    per client.
    """

    def __init__(self, f: int, lr: float, beta: float = 0.99, lr_decay: float | None = None,
                 rule: Rule = "reference", local_steps: int = 1, evaluate_every: int = 1) -> None:
        if isinstance(f, bool) or not isinstance(f, int) or f < 0:
            raise ValueError(f"MoNNA needs an integer f >= 0 (Byzantine clients tolerated); got f={f!r}")
        check_beta(beta)
        lr_schedule(0, lr, lr_decay)  # validates lr > 0 and lr_decay > 0 or None
        check_rule(rule)
        if local_steps < 1:
            raise ValueError(f"MoNNA needs local_steps >= 1 (momentum steps per round); got {local_steps}")
        if evaluate_every < 0:
            raise ValueError(f"evaluate_every must be >= 0 rounds (0: never); got {evaluate_every}")
        self.f, self.lr, self.beta, self.lr_decay = f, float(lr), float(beta), lr_decay
        self.rule: Rule = rule
        self.local_steps, self.evaluate_every = local_steps, evaluate_every
        self.models: dict[int, np.ndarray] = {}  # client -> theta_i, flat float32
        self.names: list[str] = []
        self.shapes: list[tuple[int, ...]] = []
        self.round_metrics: dict[str, float] = {}
        self.attackers: frozenset[int] = frozenset()  # every Byzantine client (from the view)

    # -- the engine's seam (fedsim.engine.view) ----------------------------------------
    def check(self, view: RoundView) -> None:
        """Refuse a run with more Byzantine clients than ``f``."""
        byz = len(view.server_attackers) + len(view.client_attackers)
        if byz > self.f:
            raise ValueError(
                f"MoNNA tolerates f={self.f} Byzantine clients but the attack config names {byz}; "
                "raise strategy.params.f or lower attack.count"
            )

    def honest_clients(self) -> list[int]:
        """Clients that are neither server-forged nor client-side attackers (simulation only)."""
        return sorted(c for c in self.models if c not in self.attackers)

    def global_model(self) -> ArrayRecord:
        """Mean of the honest clients' models (what the server loop evaluates)."""
        honest = self.honest_clients() or sorted(self.models)
        return self._record(np.mean([self.models[c] for c in honest], axis=0))

    def _record(self, flat: np.ndarray) -> ArrayRecord:
        return to_record(dict(zip(self.names, split_vector(np.asarray(flat, np.float32), self.shapes))))

    # -- train ------------------------------------------------------------------------
    def configure(self, view: RoundView, arrays: ArrayRecord, config: ConfigRecord,
                  grid: Grid) -> Iterable[Message]:
        node_to_client = view.node_to_client
        self.attackers = view.attackers
        nodes = sorted(grid.get_node_ids())
        if len(nodes) != len(node_to_client):
            raise ValueError(
                f"MoNNA mixes every client every round: set clients_per_round = data.num_clients "
                f"(got {len(nodes)} of {len(node_to_client)})"
            )
        check_honest_majority(len(nodes), self.f, "MoNNA")
        if not self.models:  # round 1: every client starts from theta_0
            self.names = list(arrays.keys())
            theta0 = arrays.to_numpy_ndarrays()
            self.shapes = [a.shape for a in theta0]
            flat = model_vector(theta0, np.float32)
            self.models = {c: flat.copy() for c in node_to_client.values()}
        lr_t = lr_schedule(view.server_round - 1, self.lr, self.lr_decay)  # lr_t = lr0 / (t/tau + 1)
        out = []
        for node in nodes:
            content = RecordDict({
                ARRAYS: self._record(self.models[node_to_client[node]]),
                CONFIG: ConfigRecord({TASK_KEY: MONNA_TASK, MONNA_LR_KEY: lr_t, MONNA_BETA_KEY: self.beta,
                                      MONNA_STEPS_KEY: self.local_steps}),
            })
            out.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        return out

    def validate(self, payload: Payload, client: int, view: RoundView) -> None:
        """The run's codec's payload of the model's tensors (:func:`fedsim.codecs.model.validate_update`)."""
        validate_update(view.codec, payload, view.infos)

    def aggregate(self, view: RoundView, payloads: Mapping[int, Payload],
                  metrics: Mapping[int, Mapping[str, float]]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round = view.server_round
        halves: dict[int, np.ndarray] = {}
        weights, losses = [], []
        for client, payload in payloads.items():
            step = decode_update(view.codec, payload, view.infos, view.seed, server_round, client)
            if not view.screen(client, step):  # finite, within validation.max_update_norm
                continue
            halves[client] = self.models[client] + model_vector(step, np.result_type(*step)).astype(np.float32)
            weights.append(float(metrics[client][NUM_EXAMPLES]))
            losses.append(float(metrics[client][TRAIN_LOSS]))
        self.round_metrics = {}
        if not halves:
            return None, None
        clients = sorted(halves)
        x = np.stack([halves[c] for c in clients])
        forged = [r for r, c in enumerate(clients) if c in view.server_attackers]
        for c, row in view.forge_vectors(halves, np.float32).items():  # omniscient, on the half-steps
            x[clients.index(c)] = row
        attackers = [r for r, c in enumerate(clients) if c in view.client_attackers]
        if not 2 * self.f < len(clients):
            log.warning("round %d: MoNNA needs 2f < n; got f=%d and %d valid replies: models kept",
                        server_round, self.f, len(clients))
        else:
            rng = np.random.default_rng([view.seed, server_round, 0x4E4A])
            pivots, thetas = mix_round(x, self.f, rule=self.rule, forged=forged, attackers=attackers, rng=rng)
            for r, theta in zip(pivots, thetas):
                self.models[clients[r]] = np.asarray(theta, np.float32)
        if self._evaluate_now(view):
            evaluate = view.evaluator
            assert evaluate is not None
            self.round_metrics = honest_summary([evaluate(self._record(self.models[c]))
                                                 for c in self.honest_clients()])
        total = float(sum(weights))
        out = MetricRecord({NUM_EXAMPLES: total, TRAIN_LOSS: float(np.dot(weights, losses) / total)})
        return self.global_model(), out

    def _evaluate_now(self, view: RoundView) -> bool:
        if view.evaluator is None or self.evaluate_every == 0:
            return False
        return view.server_round == 1 or view.server_round % self.evaluate_every == 0


    def summary(self) -> None:
        log.info("MoNNA: f=%d, lr=%g, beta=%g, lr_decay=%s, rule=%s, local_steps=%d",
                 self.f, self.lr, self.beta, self.lr_decay, self.rule, self.local_steps)


@STRATEGIES.register("monna")
def monna(f: int, lr: float, beta: float = 0.99, lr_decay: float | None = None, rule: Rule = "reference",
          local_steps: int = 1, evaluate_every: int = 1) -> MoNNA:
    """MoNNA (see :class:`MoNNA`)."""
    return MoNNA(f, lr, beta, lr_decay, rule, local_steps, evaluate_every)


@STRATEGIES.register("nna")
def nna(f: int, lr: float, lr_decay: float | None = None, rule: Rule = "reference", local_steps: int = 1,
        evaluate_every: int = 1) -> MoNNA:
    """NNA: MoNNA without momentum (``beta = 0``)."""
    return MoNNA(f, lr, 0.0, lr_decay, rule, local_steps, evaluate_every)


__all__ = ["MoNNA", "RULES", "honest_summary", "mix_round", "monna", "nna"]
