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

How EF21 fits a federated round
-------------------------------
One round = one gradient evaluation per client, no local epochs. The server broadcasts
``x^t`` and, to client i, the scalar ``scale_i = n w_i``; the client evaluates
``grad f_i(x^t)`` once (full batch; a minibatch for EF21-SGD), computes ``c_i`` with
:func:`client_step` and replies with the compressed ``c_i`` only. The client's ``g_i``
lives in its persistent state (a plain array); the server never needs it, because it
holds ``g = sum_i w_i g_i`` and updates it with :func:`server_aggregate`. A client with
no state yet starts from ``g_i = 0`` and sends its first message uncompressed, so the
first message ``c_i = grad f_i / (n w_i) - 0`` is exactly the paper's initialisation
``g_i^0 = grad f_i(x^0) / (n w_i)``. Absent clients (EF21-PP, dropouts) send nothing
and the server's ``g`` keeps their last contribution ``w_i g_i``.

The invariant ``g == sum_i w_i g_i`` holds only if a client commits ``g_i + c_i``
exactly when the server added ``w_i c_i``. A reply lost in the network must therefore
not be committed: :class:`EF21ClientState` keeps the last message as ``pending`` and
:func:`client_commit` applies it only when the server acknowledges the round it was
sent in.

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

import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.floating]
Compress = Callable[[np.ndarray], np.ndarray]

__all__ = [
    "EF21ClientState",
    "client_commit",
    "client_init",
    "client_round",
    "client_step",
    "ef21_stepsize",
    "ef21w_stepsize",
    "l_am",
    "l_qm",
    "l_weighted",
    "scales",
    "server_aggregate",
    "server_step",
    "smoothness_weights",
    "stepsize",
    "theta_beta",
    "weighted_sum",
    "weights_from",
]


# --------------------------------------------------------------------------- weights


def _positive_vector(values: ArrayLike, what: str) -> FloatArray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D vector; got shape {v.shape}")
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"{what} must be finite and > 0 (a weight w_i = 0 divides by n w_i); got {v}")
    return v


def weights_from(values: ArrayLike) -> FloatArray:
    """Normalise positive per-client values into weights: ``w_i = v_i / sum_j v_j``.

    With ``v_i = L_i`` this is EF21-W's choice (ICLR 2024, Algorithm 2); with
    ``v_i = m_i`` (local data sizes) it is the data-size option; with ``v_i = 1`` EF21.
    """
    v = _positive_vector(values, "per-client weight values")
    return v / v.sum()  # w_i = v_i / sum_j v_j


def smoothness_weights(L: ArrayLike) -> FloatArray:
    """EF21-W weights ``w_i = L_i / sum_j L_j`` (ICLR 2024, Algorithm 2)."""
    return weights_from(_positive_vector(L, "smoothness constants L_i"))


def scales(weights: ArrayLike) -> FloatArray:
    """The per-client factor ``n w_i`` that client i divides its gradient by (1 for EF21)."""
    w = _positive_vector(weights, "weights")
    if not math.isclose(float(w.sum()), 1.0, rel_tol=1e-9):
        raise ValueError(f"weights must sum to 1; got sum {w.sum()!r}")
    return w.size * w  # n w_i


# ------------------------------------------------------------------ smoothness means


def l_am(L: ArrayLike) -> float:
    """Arithmetic mean ``L_AM = (1/n) sum_i L_i`` (ICLR 2024, eq. for L_AM)."""
    return float(np.mean(_positive_vector(L, "smoothness constants L_i")))


def l_qm(L: ArrayLike) -> float:
    """Quadratic mean ``L_QM = sqrt((1/n) sum_i L_i^2)`` (EF21's ``L~``, NeurIPS 2021)."""
    v = _positive_vector(L, "smoothness constants L_i")
    return float(np.sqrt(np.mean(v**2)))


def l_weighted(L: ArrayLike, weights: ArrayLike) -> float:
    """The constant that replaces ``L_QM`` for arbitrary positive weights.

    ``L_w = sqrt(sum_i w_i (L_i / (n w_i))^2) = sqrt(sum_i L_i^2 / (n^2 w_i))``: the
    weighted quadratic mean of the smoothness constants of the rescaled functions
    ``f_i / (n w_i)`` that EF21-W's clients work with. ``w_i = 1/n`` gives ``L_QM``,
    ``w_i = L_i / sum L_j`` gives ``L_AM`` (its minimum over w, by Cauchy-Schwarz).
    This is our reading of the proof of Theorem 2 (ICLR 2024) with general weights;
    the paper states the theorem for ``w_i proportional to L_i`` only.
    """
    v = _positive_vector(L, "smoothness constants L_i")
    w = _positive_vector(weights, "weights")
    if w.shape != v.shape:
        raise ValueError(f"need one weight per L_i; got {w.size} weights for {v.size} L_i")
    n = v.size
    return float(np.sqrt(np.sum(v**2 / (n * n * w))))  # sqrt(sum L_i^2 / (n^2 w_i))


# ------------------------------------------------------------------------ step sizes


def theta_beta(alpha: float) -> tuple[float, float]:
    """``theta = 1 - sqrt(1-alpha)``, ``beta = (1-alpha) / (1 - sqrt(1-alpha))``.

    The constants of EF21 (NeurIPS 2021, Theorem 1, with the Young parameter
    ``s = 1/sqrt(1-alpha) - 1`` that minimises ``beta/theta``). ``alpha`` is the
    contraction parameter of C: ``||C(x) - x||^2 <= (1 - alpha) ||x||^2``.
    """
    if not (0.0 < alpha <= 1.0) or not math.isfinite(alpha):
        raise ValueError(f"a contractive compressor has alpha in (0, 1]; got alpha={alpha!r}")
    r = math.sqrt(1.0 - alpha)
    theta = 1.0 - r  # theta = 1 - sqrt(1 - alpha)
    beta = (1.0 - alpha) / theta  # beta = (1 - alpha) / (1 - sqrt(1 - alpha))
    return theta, beta


def stepsize(L: float, L_tilde: float, alpha: float) -> float:
    """``gamma = 1 / (L + L_tilde sqrt(beta/theta))`` (EF21 Theorem 1; EF21-W Theorem 2).

    ``L`` is the smoothness of f, ``L_tilde`` is ``L_QM`` (EF21), ``L_AM`` (EF21-W) or
    :func:`l_weighted`. With ``alpha = 1`` (no compression) this is ``1/L``.
    """
    if not (L > 0 and L_tilde > 0 and math.isfinite(L) and math.isfinite(L_tilde)):
        raise ValueError(f"step size needs finite L > 0 and L_tilde > 0; got L={L}, L_tilde={L_tilde}")
    theta, beta = theta_beta(alpha)
    return 1.0 / (L + L_tilde * math.sqrt(beta / theta))  # 1 / (L + L~ sqrt(beta/theta))


def ef21_stepsize(L_i: ArrayLike, alpha: float, L: float | None = None) -> float:
    """EF21's theoretical step ``1 / (L + L_QM sqrt(beta/theta))`` (NeurIPS 2021, Thm 1).

    ``L`` (smoothness of f) defaults to ``L_AM``, a valid upper bound since
    ``f = (1/n) sum f_i``; pass the exact value when it is known.
    """
    return stepsize(l_am(L_i) if L is None else L, l_qm(L_i), alpha)


def ef21w_stepsize(L_i: ArrayLike, alpha: float, L: float | None = None) -> float:
    """EF21-W's theoretical step ``1 / (L + L_AM sqrt(beta/theta))`` (ICLR 2024, Thm 2).

    The ICLR 2024 paper's improved analysis gives the same step to the original EF21
    (and for Top-k the iterates coincide anyway).
    """
    return stepsize(l_am(L_i) if L is None else L, l_am(L_i), alpha)


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


class EF21ClientState(NamedTuple):
    """What client i keeps between rounds (plain arrays and an int: checkpointable).

    Fields
    ------
    g : ndarray
        ``g_i`` as the server knows it: the sum of all acknowledged messages. The
        server's ``g`` contains ``w_i g``. Starts at zeros.
    pending : ndarray
        The last ``c_i`` sent, not yet known to have reached the server. Committed to
        ``g`` by :func:`client_commit` only if the server acknowledges it, so a reply
        lost in the network does not break ``g == sum_i w_i g_i``.
    pending_round : int
        Round in which ``pending`` was sent; -1 when nothing is pending.
    started : bool
        Whether the server has acknowledged a message from this client, i.e. holds
        ``w_i g_i`` in its ``g``. Until then every message goes uncompressed.
    """

    g: np.ndarray
    pending: np.ndarray
    pending_round: int
    started: bool


def client_init(dim: int, dtype: str = "float64") -> EF21ClientState:
    """Fresh state: ``g_i = 0``, nothing pending, first message still to send."""
    if dim <= 0:
        raise ValueError(f"model dimension must be positive; got {dim}")
    z = np.zeros(dim, dtype=dtype)
    return EF21ClientState(g=z, pending=z.copy(), pending_round=-1, started=False)


def client_commit(state: EF21ClientState, acked_round: int) -> EF21ClientState:
    """Commit the pending message if the server acknowledges the round it was sent in.

    ``acked_round`` is the last round in which the server added this client's message
    (the server tells the client, one int). ``g_i = g_i + c_i`` only then; otherwise
    the message was lost and is dropped, exactly as the server dropped it.
    """
    if state.pending_round < 0:
        return state
    zero = np.zeros_like(state.pending)
    if acked_round == state.pending_round:
        return EF21ClientState(state.g + state.pending, zero, -1, True)  # g_i = g_i + c_i
    # Lost: the server never added it, so neither does the client. A lost first
    # message leaves ``started`` False: the next message goes uncompressed again.
    return EF21ClientState(state.g, zero, -1, state.started)


def client_round(
    state: EF21ClientState,
    grad: np.ndarray,
    scale: float,
    compress: Compress,
    rnd: int,
    acked_round: int,
) -> tuple[np.ndarray, bool, EF21ClientState]:
    """What the ClientApp does in round ``rnd``: commit, then one EF21-W step.

    Returns ``(c_i, dense, new_state)``; ``dense`` is True for the first message
    (``c_i = grad/(n w_i)`` uncompressed, to be sent with a dense codec), False
    afterwards (``c_i = C(grad/(n w_i) - g_i)``, already in the compressor's image).
    """
    state = client_commit(state, acked_round)
    dense = not state.started
    c, _ = client_step(grad, state.g, scale, _identity if dense else compress)
    return c, dense, state._replace(pending=c, pending_round=rnd)


def _identity(x: np.ndarray) -> np.ndarray:
    return x


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
