"""A pure-numpy reference loop for EF21, EF21-W, EF21-SGD and EF21-PP.

The loop runs the maths of :mod:`fedsim.strategies.ef21w` (the same functions the
Flower strategy and client call) on in-memory oracles: differential tests compare it
with plain gradient descent and the benchmark (``benchmarks/ef21w.py``) uses it. It is
the reference the federated run must match, round for round.

Rounds are counted as in a federated run: round 0 sends ``g_i^0 = grad f_i(x^0)/(n w_i)``
uncompressed; round t >= 1 evaluates the clients at ``x^t = x^{t-1} - gamma g^{t-1}`` and
sends compressed ``c_i``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from fedsim.strategies.ef21w import client_step, scales, server_aggregate, server_step, weighted_sum

from .compressors import Compressor, Identity

__all__ = ["EF21Trace", "Oracle", "logreg_oracles", "run_ef21"]

Oracle = Callable[[np.ndarray, np.random.Generator], np.ndarray]
"""Client i's gradient oracle ``(x, rng) -> grad f_i(x)`` (or a minibatch estimate)."""


class EF21Trace(NamedTuple):
    """The record of one run.

    Fields
    ------
    x : ndarray
        The last iterate ``x^T``.
    grad_norm_sq : ndarray, shape (T+1,)
        ``||grad f(x^t)||^2`` for t = 0..T.
    bits : ndarray, shape (T+1,)
        Bits sent per client (mean over clients), cumulative, to produce ``x^t``:
        ``bits[0] = 0``, ``bits[1]`` = the uncompressed first message.
    g_err : float
        Largest ``||g - sum_i w_i g_i|| / max(1, ||g||)`` seen: the server's bookkeeping.
    """

    x: np.ndarray
    grad_norm_sq: np.ndarray
    bits: np.ndarray
    g_err: float

    @property
    def rounds(self) -> int:
        return len(self.grad_norm_sq) - 1

    def rounds_to(self, tol: float) -> int | None:
        """First t with ``||grad f(x^t)||^2 < tol``; None if never reached."""
        hit = np.flatnonzero(self.grad_norm_sq < tol)
        return int(hit[0]) if hit.size else None


def run_ef21(
    oracles: Sequence[Oracle],
    x0: ArrayLike,
    gamma: float,
    rounds: int,
    compressor: Compressor | None = None,
    weights: ArrayLike | None = None,
    participation: ArrayLike | None = None,
    full_grad: Callable[[np.ndarray], np.ndarray] | None = None,
    rng: np.random.Generator | None = None,
    tol: float | None = None,
    callback: Callable[[int, np.ndarray, np.ndarray, list[np.ndarray]], None] | None = None,
) -> EF21Trace:
    """Run EF21 / EF21-W (and their SGD and PP variants) for ``rounds`` rounds.

    Parameters
    ----------
    oracles : sequence of Oracle
        One per client; exact gradients give EF21, minibatch estimates EF21-SGD.
    x0 : array_like
        Starting point.
    gamma : float
        Step size (theory x multiplier: see :func:`fedsim.strategies.ef21w.stepsize`).
    rounds : int
        Compressed rounds after the uncompressed round 0.
    compressor : Compressor, optional
        Contractive C; identity by default.
    weights : array_like, optional
        ``w_i``; ``1/n`` (EF21) by default, ``L_i / sum L_j`` for EF21-W.
    participation : array_like, optional
        ``p_i``: client i replies in a round with probability ``p_i`` (EF21-PP).
        Round 0 is always full (the papers' initialisation). Default: all reply.
    full_grad : callable, optional
        ``x -> grad f(x)`` for the record. If None, the mean of the oracles' outputs
        is used, which is ``grad f(x^t)`` only for exact oracles and full participation
        (the cheap path the benchmark takes); otherwise it is required.
    rng : numpy Generator, optional
        Source of minibatches and participation draws (seeded; default seed 0).
    tol : float, optional
        Stop at the first t with ``||grad f(x^t)||^2 < tol``.
    callback : callable, optional
        ``callback(t, x^t, g^t, [g_i^t])`` after each round's aggregation.
    """
    n = len(oracles)
    if n == 0:
        raise ValueError("run_ef21 needs at least one client oracle")
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0; got {rounds}")
    if not gamma > 0:
        raise ValueError(f"step size gamma must be > 0; got {gamma}")
    rng = rng if rng is not None else np.random.default_rng(0)
    C = compressor if compressor is not None else Identity()
    w = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=np.float64)
    s = scales(w)  # n w_i
    p = None if participation is None else np.asarray(participation, dtype=np.float64)
    if p is not None and (p.shape != (n,) or np.any(p <= 0) or np.any(p > 1)):
        raise ValueError(f"participation needs one p_i in (0, 1] per client; got {p}")
    if full_grad is None and p is not None:
        raise ValueError("with partial participation pass full_grad: the replies do not average to grad f")

    x = np.array(x0, dtype=np.float64, copy=True)
    d = x.size
    record_g: list[float] = []
    record_bits: list[float] = [0.0]

    def grad_norm_sq(x: np.ndarray, grads: list[np.ndarray]) -> float:
        gf = full_grad(x) if full_grad is not None else np.mean(grads, axis=0)
        return float(gf @ gf)

    # Round 0: g_i^0 = grad f_i(x^0) / (n w_i), uncompressed; g^0 = sum_i w_i g_i^0.
    grads = [o(x, rng) for o in oracles]
    record_g.append(grad_norm_sq(x, grads))
    g_i = [gr / s[i] for i, gr in enumerate(grads)]
    g = weighted_sum(w, g_i)
    bits = float(Identity().bits(d))
    g_err = 0.0
    for t in range(1, rounds + 1):
        if tol is not None and record_g[-1] < tol:
            break
        x = server_step(x, g, gamma)  # x^t = x^{t-1} - gamma g^{t-1}
        record_bits.append(bits)
        active: list[int] = list(range(n)) if p is None else np.flatnonzero(rng.random(n) < p).tolist()
        grads = [oracles[i](x, rng) for i in active] if p is not None else [o(x, rng) for o in oracles]
        messages = {}
        for i, gr in zip(active, grads):
            c, g_i[i] = client_step(gr, g_i[i], s[i], C.compress)
            messages[i] = c
        bits += len(messages) * C.bits(d) / n
        g = server_aggregate(g, w, messages)  # g^t = g^{t-1} + sum_{i active} w_i c_i
        g_err = max(g_err, float(np.linalg.norm(g - weighted_sum(w, g_i)) / max(1.0, float(np.linalg.norm(g)))))
        record_g.append(grad_norm_sq(x, grads))
        if callback is not None:
            callback(t, x, g, g_i)
    return EF21Trace(x=x, grad_norm_sq=np.array(record_g), bits=np.array(record_bits), g_err=g_err)


def logreg_oracles(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], lam: float = 0.1, batch_size: int | None = None
) -> list[Oracle]:
    """Gradient oracles of the papers' logistic regression, one per client ``(A_i, b_i)``.

    ``batch_size=None`` gives exact gradients (EF21); an int gives minibatch gradients
    of that size, drawn without replacement from the oracle's ``rng`` (EF21-SGD).
    """
    from fedsim.problems.logreg import grad

    def make(A: np.ndarray, b: np.ndarray) -> Oracle:
        if batch_size is None:
            return lambda x, rng: grad(x, A, b, lam)
        if not 1 <= batch_size <= A.shape[0]:
            raise ValueError(f"batch_size must be in [1, {A.shape[0]}]; got {batch_size}")

        def oracle(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            idx = rng.choice(A.shape[0], size=batch_size, replace=False)
            return grad(x, A[idx], b[idx], lam)

        return oracle

    return [make(A, b) for A, b in parts]
