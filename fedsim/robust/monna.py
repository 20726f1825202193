"""MoNNA: the client-side maths as pure functions, and a numpy reference simulation.

Farhadkhani, Guerraoui, Gupta, Hoang, Pinot, Stephan, "Robust Collaborative Learning with
Linear Gradient Overhead", ICML 2023 (PMLR 202), https://arxiv.org/abs/2209.10931
(Algorithm 1). Each honest worker ``i`` keeps a model ``theta_i`` and a Polyak momentum
``m_i`` in exponential-moving-average form; per step::

    g_i     = grad loss_i(theta_i; batch)
    m_i     = beta * m_i + (1 - beta) * g_i          # momentum_update
    h_i     = theta_i - lr_t * m_i                   # half_step, what the worker shares
    theta_i = NNA_i(R_i)                             # fedsim.robust.nna.nna_mix (server)
    lr_t    = lr0 / (t / tau + 1)                    # lr_schedule

NNA is MoNNA with ``beta = 0``. :func:`simulate` runs the whole algorithm on a small
linear-regression problem in numpy; the Flower strategy is tested against it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from .nna import Rule, check_honest_majority, check_rule, nna_mix


class MomentumState(NamedTuple):
    """What an honest worker keeps between rounds (besides the model the server sends).

    momentum : the Polyak momentum ``m_i`` (same shape as the model), EMA form; starts at 0.
    """

    momentum: np.ndarray


def check_beta(beta: float) -> None:
    """``beta`` in [0, 1): 1 would never let a gradient in."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"MoNNA needs momentum 0 <= beta < 1 (EMA form); got beta={beta}")


def momentum_init(params: np.ndarray) -> MomentumState:
    """``m_0 = 0`` shaped like ``params``."""
    return MomentumState(momentum=np.zeros_like(np.asarray(params)))


def momentum_update(grad: np.ndarray, state: MomentumState, beta: float) -> MomentumState:
    """Polyak momentum in EMA form: ``m = beta * m + (1 - beta) * g``."""
    check_beta(beta)
    m = state.momentum
    return MomentumState(momentum=beta * m + (1.0 - beta) * np.asarray(grad, dtype=m.dtype))


def half_step(theta: np.ndarray, momentum: np.ndarray, lr: float) -> np.ndarray:
    """The half-step model a worker shares: ``h = theta - lr * m``."""
    return np.asarray(theta) - lr * np.asarray(momentum)


def lr_schedule(t: int, lr0: float, tau: float | None = None) -> float:
    """``lr_t = lr0 / (t / tau + 1)`` (the paper's MNIST schedule); ``tau=None``: constant."""
    if lr0 <= 0:
        raise ValueError(f"learning rate must be > 0; got lr0={lr0}")
    if t < 0:
        raise ValueError(f"step must be >= 0; got t={t}")
    if tau is None:
        return float(lr0)
    if tau <= 0:
        raise ValueError(f"lr decay horizon must be > 0 (or None for a constant rate); got tau={tau}")
    return lr0 / (t / tau + 1.0)  # lr_t = lr0 / (t/tau + 1)


def client_step(
    theta: np.ndarray, grad: np.ndarray, state: MomentumState, beta: float, lr: float
) -> tuple[np.ndarray, MomentumState]:
    """One honest worker's step: update the momentum, return ``(h, new_state)``."""
    state = momentum_update(grad, state, beta)
    return half_step(theta, state.momentum, lr), state


# ----------------------------------------------------------------------------------------
# Reference simulation
# ----------------------------------------------------------------------------------------

Forge = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
"""``forge(honest (n_h, d), f, rng) -> (f, d)``: :meth:`ServerAttack.forge` fits."""


class LinearRegression(NamedTuple):
    """One least-squares problem per honest worker: ``loss_j(w) = |A_j w - y_j|^2 / (2 m)``.

    a : (n_h, m, d) features; y : (n_h, m) targets; w_star : (d,) the minimiser of the
    average honest loss (computed exactly).
    """

    a: np.ndarray
    y: np.ndarray
    w_star: np.ndarray

    def loss(self, w: np.ndarray) -> float:
        """Average honest loss at ``w``."""
        r = np.einsum("jmd,d->jm", self.a, w) - self.y
        return float(0.5 * np.mean(r**2))

    def excess_loss(self, w: np.ndarray) -> float:
        """``loss(w) - loss(w_star)`` (>= 0)."""
        return self.loss(w) - self.loss(self.w_star)


def make_linear_regression(
    n_honest: int, d: int, samples: int, *, heterogeneity: float, noise: float,
    offset: float, rng: np.random.Generator,
) -> LinearRegression:
    """Worker ``j`` draws ``A_j ~ N(0, I)`` and ``y_j = A_j (w0 + heterogeneity * u_j) +
    noise * e`` with ``w0 = offset * 1`` (far from 0, so that sign flipping is visible)."""
    w0 = np.full(d, offset)
    a = rng.normal(size=(n_honest, samples, d))
    local = w0 + heterogeneity * rng.normal(size=(n_honest, d))
    y = np.einsum("jmd,jd->jm", a, local) + noise * rng.normal(size=(n_honest, samples))
    flat_a, flat_y = a.reshape(-1, d), y.reshape(-1)
    w_star = np.linalg.lstsq(flat_a, flat_y, rcond=None)[0]
    return LinearRegression(a=a, y=y, w_star=w_star)


class SimResult(NamedTuple):
    """thetas : (n_h, d) final honest models; excess : (steps,) excess loss of the mean
    honest model after each step; worst : (steps,) largest excess loss over honest models."""

    thetas: np.ndarray
    excess: np.ndarray
    worst: np.ndarray


def simulate(
    problem: LinearRegression,
    *,
    f: int,
    steps: int,
    beta: float,
    lr0: float,
    tau: float | None = None,
    batch: int = 5,
    mixer: str = "nna",
    rule: Rule = "reference",
    forge: Forge | None = None,
    seed: int = 0,
) -> SimResult:
    """Run MoNNA (``mixer="nna"``) or momentum SGD with plain averaging (``mixer="mean"``).

    The ``n_h`` honest workers of ``problem`` and ``f`` Byzantine workers (rows
    ``n_h .. n_h+f-1``); the Byzantine rows are ``forge(honest half-steps, f, rng)`` (zeros
    if ``forge`` is None, i.e. crashed workers that send 0). All workers start at 0.
    """
    check_beta(beta)
    mixer_ok = ("nna", "mean")
    if mixer not in mixer_ok:
        raise ValueError(f"unknown mixer {mixer!r}; known: {', '.join(mixer_ok)}")
    rule = check_rule(rule)
    n_h, samples, d = problem.a.shape
    n = n_h + f
    check_honest_majority(n, f, "MoNNA")
    rng = np.random.default_rng(seed)
    thetas = np.zeros((n_h, d))
    moms = np.zeros((n_h, d))
    byz = list(range(n_h, n))
    excess = np.empty(steps)
    worst = np.empty(steps)
    for t in range(steps):
        idx = rng.integers(samples, size=(n_h, batch))
        a = np.take_along_axis(problem.a, idx[:, :, None], axis=1)  # (n_h, b, d)
        y = np.take_along_axis(problem.y, idx, axis=1)
        resid = np.einsum("jbd,jd->jb", a, thetas) - y
        grads = np.einsum("jbd,jb->jd", a, resid) / batch  # g_j = A_b^T (A_b theta_j - y_b) / b
        moms = beta * moms + (1.0 - beta) * grads  # m = beta m + (1 - beta) g
        halves = thetas - lr_schedule(t, lr0, tau) * moms  # h = theta - lr_t m
        forged = np.zeros((f, d)) if forge is None else np.asarray(forge(halves, f, rng))
        sent = np.vstack([halves, forged.reshape(f, d)])
        if mixer == "mean":
            thetas = np.repeat(sent.mean(axis=0, keepdims=True), n_h, axis=0)
        else:
            thetas = nna_mix(sent, f, rule=rule, pivots=range(n_h), byzantine=byz, rng=rng)
        excess[t] = problem.excess_loss(thetas.mean(axis=0))
        worst[t] = max(problem.excess_loss(th) for th in thetas)
    return SimResult(thetas=thetas, excess=excess, worst=worst)
