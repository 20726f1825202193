"""EF21 and EF21-W: error feedback with a Markov compressor, plain and weighted.

Papers
------
* P. Richtarik, I. Sokolov, I. Fatkhullin, "EF21: A New, Simpler, Theoretically Better,
  and Practically Faster Error Feedback", NeurIPS 2021, https://arxiv.org/abs/2106.05203
  (Algorithm 1; Theorem 1 for smooth non-convex f).
* P. Richtarik, E. Gasanov, K. Burlachenko, "Error Feedback Reloaded: From Quadratic to
  Arithmetic Mean of Smoothness Constants", ICLR 2024, https://arxiv.org/abs/2402.10774
  (Algorithm 2 "EF21-W"; Theorem 2 for EF21-W; Section 2 closes with the improved
  analysis of the original EF21). Theorem and lemma numbers follow the arXiv versions;
  check them against the proceedings before quoting.
* I. Fatkhullin, I. Sokolov, E. Gorbunov, Z. Li, P. Richtarik, "EF21 with Bells &
  Whistles", arXiv 2110.03294 (EF21-SGD and EF21-PP; their step-size theory is not
  implemented here: those variants use the full-gradient step times a multiplier).

The problem is ``min_x f(x) = (1/n) sum_i f_i(x)`` with ``f_i`` ``L_i``-smooth and ``f``
``L``-smooth (``L <= L_AM``). With positive weights ``w_i`` (``sum_i w_i = 1``) EF21-W is::

    round 0     client i: g_i = grad f_i(x^0) / (n w_i)            (sent uncompressed)
                server:   g   = sum_i w_i g_i;  x^1 = x^0 - gamma g
    round t>=1  client i: c_i = C(grad f_i(x^t) / (n w_i) - g_i);  g_i = g_i + c_i
                server:   g   = g + sum_i w_i c_i;  x^{t+1} = x^t - gamma g

``w_i = 1/n`` is EF21 (``n w_i = 1``); ``w_i = L_i / sum_j L_j`` is EF21-W.

How EF21 fits a federated round (:class:`EF21W`)
------------------------------------------------
One round = one gradient evaluation per client, no local epochs: ``train.*`` of the
config (epochs, lr) is not used. In round t the server sends each sampled client
``x^t`` (the model, whatever the config names, as one flat vector of its tensors) and
in the config ``s_i = n w_i`` and the last round it acknowledged from that client;
the client (task ``ef21``, :mod:`fedsim.clients.ef21`) evaluates ``grad f_i(x^t)`` once
(full batch; a minibatch for EF21-SGD), runs :func:`fedsim.ef21.client.client_round`
with the state kept in Flower's ``Context.state`` and replies with the encoded
``c_i`` only. The server holds ``x``, ``g`` and, per client, the last round it
added; it decodes, ``g = g + sum_i w_i c_i`` (:func:`server_aggregate`), and steps
``x^{t+1} = x^t - gamma g`` (:func:`server_step`).

Start (``start: dense``, the papers'): a client's first message is its uncompressed
gradient, which sets ``g_i^0 = grad f_i(x^0)/(n w_i)``; the server takes its first
step once every client's first message is in ``g`` (round 1 under full
participation; under partial participation the first rounds collect them while ``x``
stays at ``x^0``). ``start: zero`` starts from ``g_i^0 = 0`` with compressed messages
and steps from round 1. The weights and the step need the ``L_i``: given in the
config (``L_i``) or reported by each client with its first message; until all are
known the scale sent is 1 and ``x`` does not move. The client keeps ``h_i = n w_i g_i``
(so the invariant ``g = (1/n) sum_i h_i`` does not depend on when the weights are
fixed) and commits a message only when the server acknowledges it: a reply lost to a
dropout, a timeout or a rejection is dropped on both sides. Absent clients (EF21-PP,
sampling, the network model's dropouts) send nothing, keep ``g_i`` and the server's
``g`` keeps their last contribution ``w_i g_i``.

Step sizes (Theorem 1 of EF21 / Theorem 2 of EF21-W)::

    theta = 1 - sqrt(1 - alpha),  beta = (1 - alpha) / (1 - sqrt(1 - alpha))
    EF21:   gamma <= 1 / (L + L_QM sqrt(beta/theta)),  L_QM = sqrt((1/n) sum_i L_i^2)
    EF21-W: gamma <= 1 / (L + L_AM sqrt(beta/theta)),  L_AM = (1/n) sum_i L_i

For a positively homogeneous compressor (Top-k, identity) EF21-W's iterates equal EF21's
at the same step (``n w_i c_i^W = C(grad f_i - n w_i g_i^W)``), and the ICLR 2024 paper's
improved analysis shows that the original EF21 also converges with the ``L_AM`` step:
the gain is the larger admissible step. The two methods differ only for compressors
that are not positively homogeneous.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from numpy.typing import ArrayLike

from fedsim.codecs.base import Payload, PayloadError
from fedsim.codecs.model import model_vector, split_vector, tensor_infos
from fedsim.config import ClientSpec
from fedsim.ef21.client import client_config
from fedsim.ef21.theory import (  # noqa: F401
    THEORIES,
    WEIGHTS,
    Plan,
    ef21_stepsize,
    ef21w_stepsize,
    l_am,
    l_qm,
    l_weighted,
    plan,
    positive_vector,
    scales,
    smoothness_weights,
    stepsize,
    theta_beta,
    weights_from,
)
from fedsim.ef21.wire import WIRE_DTYPES, CodecWire, DenseWire, TopKWire
from fedsim.engine.view import PayloadStrategy, RoundView
from fedsim.keys import ARRAYS, CONFIG, EF21_L, NUM_EXAMPLES, TRAIN_LOSS
from fedsim.registry import STRATEGIES

from .server_evaluated import ServerEvaluatedStrategy

log = logging.getLogger("fedsim")

Compress = Callable[[np.ndarray], np.ndarray]

__all__ = [  # the theory lives in fedsim.ef21.theory; re-exported for the tests and the benchmark
    "EF21W", "Plan", "client_step", "ef21_stepsize", "ef21w_stepsize", "l_am", "l_qm", "l_weighted", "plan",
    "scales", "server_aggregate", "server_step", "smoothness_weights", "stepsize", "theta_beta",
    "weighted_sum", "weights_from",
]


# ------------------------------------------------------------------------ the server


def weighted_sum(weights: ArrayLike, vectors: Mapping[int, np.ndarray] | list[np.ndarray]) -> np.ndarray:
    """``sum_i w_i v_i`` over the clients present in ``vectors`` (the server's g at start)."""
    w = np.asarray(weights, dtype=np.float64)
    items = vectors.items() if isinstance(vectors, Mapping) else enumerate(vectors)
    out: np.ndarray | None = None
    for i, v in items:
        term = w[i] * np.asarray(v, dtype=np.float64)
        out = term if out is None else out + term
    if out is None:
        raise ValueError("weighted_sum needs at least one vector")
    return out


def server_step(x: np.ndarray, g: np.ndarray, gamma: float) -> np.ndarray:
    """``x^{t+1} = x^t - gamma g^t`` (EF21 Algorithm 1, line 3)."""
    return x - gamma * g  # x = x - gamma g


def server_aggregate(g: np.ndarray, weights: ArrayLike, messages: Mapping[int, np.ndarray]) -> np.ndarray:
    """``g^{t+1} = g^t + sum_{i in S} w_i c_i`` over the clients ``S`` that replied.

    An absent client (EF21-PP, a dropout) contributes nothing: its last ``w_i g_i``
    stays inside ``g``. A client's first (uncompressed) message is an ordinary
    ``c_i = g_i^0 - 0``, so it needs no special case. ``messages`` maps client index
    (into ``weights``) to its decoded ``c_i``.
    """
    w = np.asarray(weights, dtype=np.float64)
    out = np.array(g, dtype=np.float64, copy=True)
    for i, c in messages.items():
        if not 0 <= i < w.size:
            raise ValueError(f"message from client {i}, but only {w.size} weights are known")
        out += w[i] * c  # g = g + w_i c_i
    return out


# ------------------------------------------------------------------------ the client


def client_step(
    grad: np.ndarray,
    g_i: np.ndarray,
    scale: float,
    compress: Compress,
) -> tuple[np.ndarray, np.ndarray]:
    """One EF21-W client update: ``c_i = C(grad/(n w_i) - g_i)``, ``g_i' = g_i + c_i``.

    ICLR 2024, Algorithm 2 (``scale = n w_i``); EF21 Algorithm 1 with ``scale = 1``.
    For the first message pass ``g_i = 0`` and the identity for ``compress``: then
    ``c_i = grad / (n w_i)`` is the paper's initialisation ``g_i^0``.

    Returns
    -------
    (c_i, g_i_new)
        The message (what the codec encodes) and the client's new ``g_i``.
    """
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale n*w_i must be finite and > 0; got {scale!r}")
    c = np.asarray(compress(grad / scale - g_i))  # c_i = C(grad f_i / (n w_i) - g_i)
    if c.shape != g_i.shape:
        raise ValueError(f"compressor returned shape {c.shape}, expected {g_i.shape}")
    return c, g_i + c  # g_i = g_i + c_i


# ---------------------------------------------------------------------- the strategy


@STRATEGIES.register("ef21w")
class EF21W(ServerEvaluatedStrategy, PayloadStrategy):
    """EF21-W (and EF21, EF21-SGD, EF21-PP) as a fedsim strategy; see the module docstring.

    A :class:`~fedsim.engine.view.PayloadStrategy`: it consumes the clients' raw payloads
    and validates them itself, reading the round (client ids, seed, codec, attackers)
    from the :class:`~fedsim.engine.view.RoundView` the engine hands it. Per round it
    reports in ``round_metrics``: ``ef21_gamma``, ``ef21_L_qm``, ``ef21_L_am``,
    ``ef21_alpha``, ``ef21_steps`` (steps taken so far), ``ef21_g_sq`` (``||g||^2``)
    and, with ``monitor``, ``grad_norm_sq`` = ``||grad f(x)||^2`` and ``train_f`` =
    ``f(x)`` at the model returned (``f = (1/n) sum_i f_i`` over every client's full
    partition, computed on the server from the data config: a
    diagnostic, not part of the algorithm).

    Parameters
    ----------
    weights : {"smoothness", "equal", "data-size"}
        ``w_i = L_i / sum L_j`` (EF21-W), ``1/n`` (EF21) or ``m_i / sum m_j``.
    compressor : {"topk", "identity", "codec"}
        Top-k over the whole model vector (``k`` coordinates, alpha = k/d); none
        (alpha = 1: EF21 is gradient descent); or the run's codec per tensor, which
        must be memoryless and declare its alpha (or pass ``alpha``).
    k : int, optional
        Coordinates kept by ``topk``.
    alpha : float, optional
        Contraction of the ``codec`` compressor, if the codec does not declare it.
    multiplier : float
        ``gamma = multiplier x`` the theoretical step (the papers try 1, 2, 4, ...).
    step : float, optional
        An explicit ``gamma`` instead of the theory (then ``L_i`` are needed only for
        ``weights: smoothness``).
    theory : {"auto", "qm", "am"}
        ``L~`` of the theoretical step: ``auto`` = ``L_QM`` for EF21, ``L_AM`` for EF21-W
        (:func:`l_weighted` in general); ``qm`` / ``am`` force one.
    L_i : list of float, optional
        The clients' smoothness constants, in client-id order; by default each client
        computes its own and sends it with its first message.
    L : float, optional
        Smoothness of f; default ``L_AM`` (an upper bound).
    start : {"dense", "zero"}
        ``dense``: first messages uncompressed, first step once all are in (the
        papers'); ``zero``: ``g_i^0 = 0``, compressed from the start.
    batch_size : int, optional
        Minibatch size for EF21-SGD (the step keeps the full-gradient theory x
        ``multiplier``); default the full local dataset.
    dtype : {"float32", "float64"}
        Precision of the model sent and of dense / top-k values sent back.
    monitor : bool
        Compute ``grad_norm_sq`` and ``train_f`` each round (one pass over the data).
    """

    reply_metrics: ClassVar[frozenset[str]] = frozenset({EF21_L})  # L_i, with a client's first message
    # checkpoints saved before `start` became `start_mode` restore into start_mode (fedsim.checkpoint)
    state_renames: ClassVar[Mapping[str, str]] = {"start": "start_mode"}

    def __init__(self, weights: str = "smoothness", compressor: str = "topk", k: int | None = None,
                 alpha: float | None = None, multiplier: float = 1.0, step: float | None = None,
                 theory: str = "auto", L_i: list[float] | None = None, L: float | None = None,
                 start: str = "dense", batch_size: int | None = None, dtype: str = "float32",
                 monitor: bool = True) -> None:
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}; got {weights!r}")
        if theory not in THEORIES:
            raise ValueError(f"theory must be one of {THEORIES}; got {theory!r}")
        if compressor not in ("topk", "identity", "codec"):
            raise ValueError(f"compressor must be 'topk', 'identity' or 'codec'; got {compressor!r}")
        if (compressor == "topk" or k is not None) and not (isinstance(k, int) and k >= 1):
            raise ValueError(f"compressor 'topk' needs an integer k >= 1 (coordinates kept); got k={k!r}")
        if start not in ("dense", "zero"):
            raise ValueError(f"start must be 'dense' (first messages uncompressed) or 'zero'; got {start!r}")
        if not (multiplier > 0 and math.isfinite(multiplier)):
            raise ValueError(f"multiplier must be finite and > 0; got {multiplier!r}")
        if step is not None and multiplier != 1.0:
            raise ValueError("give either step (an explicit gamma) or multiplier (x the theory), not both")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (EF21-SGD) or null (full batch); got {batch_size}")
        if dtype not in WIRE_DTYPES:
            raise ValueError(f"dtype must be one of {WIRE_DTYPES}; got {dtype!r}")
        if L_i is not None:
            positive_vector(L_i, "L_i")
        self.weights, self.compressor, self.k, self.alpha_param = weights, compressor, k, alpha
        self.multiplier, self.step, self.theory, self.L_given, self.L = multiplier, step, theory, L_i, L
        # start_mode, not start: Flower's Strategy.start runs the round loop
        self.start_mode, self.batch_size, self.dtype, self.monitor = start, batch_size, dtype, monitor
        self.round_metrics: dict[str, Any] = {}
        self.x: np.ndarray | None = None  # the model, one float64 vector
        self.g: np.ndarray | None = None  # sum_i w_i g_i = (1/n) sum_i h_i
        self.acked: dict[int, int] = {}  # client -> last round whose message was added; -1 none
        self.L_known: dict[int, float] = {}
        self.m_known: dict[int, float] = {}
        self.plan: Plan | None = None
        self.steps = 0
        self._sent: dict[int, tuple[float, bool]] = {}  # client -> (scale, dense) this round

    # -- set-up ------------------------------------------------------------------------
    def resume(self, view: RoundView, arrays: ArrayRecord) -> None:
        """Before a checkpoint's state is restored: build what the first round builds."""
        self._setup(view, arrays)

    def _setup(self, view: RoundView, arrays: ArrayRecord) -> None:
        self.keys = list(arrays.keys())
        tensors = arrays.to_numpy_ndarrays()
        self.shapes = [t.shape for t in tensors]
        self.x = model_vector(tensors, np.float64)
        d = self.x.size
        self.g = np.zeros(d)
        self.clients = view.clients
        self.index = {c: i for i, c in enumerate(self.clients)}
        self.acked = {c: -1 for c in self.clients}
        self.spec = ClientSpec.from_json(view.spec_json) if self.monitor else None
        self.dense_wire = DenseWire(d, self.dtype)
        if self.compressor == "topk":
            k = self.k
            assert k is not None  # __init__ requires k for top-k
            if k > d:
                raise ValueError(f"top-k needs k <= d = {d} (the model's size); got k={k}")
            self.wire: Any = TopKWire(k, d, self.dtype)
        elif self.compressor == "identity":
            self.wire = self.dense_wire
        else:
            infos = tensor_infos([(k, s) for k, s in zip(self.keys, self.shapes)])
            self.wire = CodecWire(view.codec, infos, self.alpha_param)
        if self.L_given is not None:
            if len(self.L_given) != len(self.clients):
                raise ValueError(f"L_i lists {len(self.L_given)} constants for {len(self.clients)} clients")
            self.L_known = {c: float(v) for c, v in zip(self.clients, self.L_given)}
        self._try_plan()

    def _needs_L(self) -> bool:
        return self.weights == "smoothness" or self.step is None

    def _try_plan(self) -> None:
        """Fix the weights and the step once everything they need is known (logged once)."""
        n = len(self.clients)
        if self.plan is not None or (self._needs_L() and len(self.L_known) < n):
            return
        if self.weights == "data-size" and len(self.m_known) < n:
            return
        L_i = [self.L_known[c] for c in self.clients] if len(self.L_known) == n else None
        m_i = [self.m_known[c] for c in self.clients] if len(self.m_known) == n else None
        self.plan = plan(self.weights, self.wire.alpha, L_i, m_i if m_i else [1.0] * n, self.L, self.theory,
                         self.multiplier, self.step)
        log.info("EF21 (%s weights): alpha=%.4g, L_QM=%s, L_AM=%s, gamma=%.6g", self.weights, self.wire.alpha,
                 self.plan.L_qm, self.plan.L_am, self.plan.gamma)

    def _scale(self, client: int) -> float:
        return 1.0 if self.plan is None else float(len(self.clients) * self.plan.weights[self.index[client]])  # n w_i

    # -- a round -----------------------------------------------------------------------
    def configure(self, view: RoundView, arrays: ArrayRecord, config: ConfigRecord,
                  grid: Grid) -> Iterable[Message]:
        if self.x is None:
            self._setup(view, arrays)
        model = self._record(self.dtype)
        self._sent = {}
        out = []
        for node in grid.get_node_ids():
            client = view.node_to_client[node]
            scale, dense = self._scale(client), self.start_mode == "dense" and self.acked[client] < 0
            self._sent[client] = (scale, dense)
            cfg = ConfigRecord(dict(config))
            cfg.update(client_config(scale, self.acked[client], dense, self._needs_L() and client not in self.L_known,
                                     self.compressor, self.k, self.dtype, self.batch_size))
            out.append(Message(RecordDict({ARRAYS: model, CONFIG: cfg}), dst_node_id=node,
                               message_type=MessageType.TRAIN))
        return out

    def _record(self, dtype: str) -> ArrayRecord:
        """``x`` as the model's tensors (same names and shapes as the model the run started from)."""
        assert self.x is not None
        return ArrayRecord({k: Array(np.ascontiguousarray(p, dtype=dtype))
                            for k, p in zip(self.keys, split_vector(self.x, self.shapes))})

    def _wire_for(self, client: int) -> Any:
        if client not in self._sent:
            raise PayloadError(f"client {client} was not sent an EF21 message this round")
        return self.dense_wire if self._sent[client][1] else self.wire

    def validate(self, payload: Payload, client: int, view: RoundView) -> None:
        """Dense first message or compressed message, as asked: keys, dtypes, sizes, finite."""
        self._wire_for(client).validate(payload)

    def aggregate(self, view: RoundView, payloads: Mapping[int, Payload],
                  metrics: Mapping[int, Mapping[str, float]]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        assert self.x is not None and self.g is not None
        server_round = view.server_round
        received: dict[int, np.ndarray] = {}
        loss_sum = examples = 0.0
        for client, payload in payloads.items():
            c = self._wire_for(client).decode(payload, view.seed, server_round, client)
            if not view.screen(client, [c]):  # finite, within validation.max_update_norm: else rejected
                continue
            received[client] = c
            m = metrics[client]
            self.m_known[client] = float(m[NUM_EXAMPLES])
            loss_sum += float(m[TRAIN_LOSS]) * self.m_known[client]
            examples += self.m_known[client]
            reported_L = float(m.get(EF21_L, 0.0))
            if client not in self.L_known and math.isfinite(reported_L) and reported_L > 0:
                self.L_known[client] = reported_L
        received.update(view.forge_vectors(received, np.float64))  # omniscient attacks forge the Byzantine c_i
        n = len(self.clients)
        w_sent = np.array([self._sent[c][0] / n if c in received else 0.0 for c in self.clients])  # w_i = s_i / n
        self.g = server_aggregate(self.g, w_sent, {self.index[c]: v for c, v in received.items()})  # g += w_i c_i
        for c in received:
            self.acked[c] = server_round
        self._try_plan()
        if self.plan is not None and (self.start_mode == "zero" or min(self.acked.values()) >= 0):
            self.x = server_step(self.x, self.g, self.plan.gamma)  # x = x - gamma g
            self.steps += 1
        self._report()
        train = MetricRecord({TRAIN_LOSS: loss_sum / examples, NUM_EXAMPLES: examples}) if examples else None
        return self._record("float32"), train  # what the server evaluates and the next round passes back

    def _report(self) -> None:
        p = self.plan
        assert self.g is not None
        m: dict[str, Any] = {"ef21_gamma": p.gamma if p else None, "ef21_L_qm": p.L_qm if p else None,
                             "ef21_L_am": p.L_am if p else None, "ef21_alpha": self.wire.alpha,
                             "ef21_steps": self.steps, "ef21_g_sq": float(self.g @ self.g)}
        if self.monitor:
            from fedsim.ef21.oracles import local_problem

            assert self.spec is not None and self.x is not None
            results = [local_problem(self.spec, c).loss_grad(self.x) for c in self.clients]
            grad_f = np.mean([gr for _, gr in results], axis=0)  # grad f = (1/n) sum_i grad f_i
            m["grad_norm_sq"] = float(grad_f @ grad_f)
            m["train_f"] = float(np.mean([f for f, _ in results]))
        self.round_metrics = m


    def summary(self) -> None:
        log.info("EF21W: weights=%s, compressor=%s, k=%s, start=%s, plan=%s", self.weights, self.compressor,
                 self.k, self.start_mode, self.plan)


@STRATEGIES.register("ef21")
def ef21(**params: Any) -> EF21W:
    """EF21 (NeurIPS 2021): :class:`EF21W` with equal weights ``w_i = 1/n``."""
    if "weights" in params:
        raise ValueError("strategy 'ef21' has equal weights; use 'ef21w' to choose weights")
    return EF21W(weights="equal", **params)


ef21.params_target = EF21W  # user params are checked against EF21W's

