"""Byzantine attacks: what the ``f`` attacking clients send instead of their vector.

Where each attack runs (see :mod:`fedsim.attacks.base`):

=================  ========  ===========================================================
name               where     sends
=================  ========  ===========================================================
``sign_flip``      server    ``-mean(honest)`` (omniscient)
``alie``           server    ``mean + c * std`` (omniscient; Baruch et al. 2019)
``foe``            server    ``(1 - c) * mean`` (omniscient; Xie et al. 2019)
``ipm``            server    ``-eps * mean`` (omniscient; Xie et al. 2019)
``mimic``          server    a copy of one honest vector (omniscient; Karimireddy et al.)
``sign_flip_own``  client    ``-scale * own update`` (not omniscient)
``gaussian``       client    ``N(mean, std^2)`` in every coordinate (or added to its own)
``label_flip``     client    trains honestly on labels ``y -> (C - 1) - y``
=================  ========  ===========================================================

"Omniscient" attacks need every honest vector of the round, which only the server side of
a simulation sees: the simulator applies them after decoding and before aggregation,
and all ``f`` Byzantine rows are the same forged vector (the papers' setting). The
vectors are whatever the strategy aggregates: updates for FedAvg-like strategies,
half-step models for MoNNA (the MoNNA paper attacks the half-step models).

:func:`fedsim.attacks.line_search.line_search` picks the factor of ALIE / FOE / IPM that
moves a given aggregator's output farthest from the honest mean, as the MoNNA paper does
for ALIE and FOE; :class:`~fedsim.attacks.line_search.LineSearchAttack` repeats that search
every round.

References: Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing Defenses For
Distributed Learning", NeurIPS 2019. Xie, Koyejo, Gupta, "Fall of Empires: Breaking
Byzantine-tolerant SGD by Inner Product Manipulation", UAI 2019. Karimireddy, He, Jaggi,
"Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing", ICLR 2022 (mimic).
Allen-Zhu, Ebrahimian, Li, Alistarh, "Byzantine-Resilient Non-Convex Stochastic Gradient
Descent", ICLR 2021 (sign flipping). Names follow ByzFL (EPFL).
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

from fedsim.registry import ATTACKS

from .base import ClientAttack, ServerAttack

# ----------------------------------------------------------------------------------------
# The maths, as pure functions of the honest vectors (n_h, d)
# ----------------------------------------------------------------------------------------


def _honest(honest: np.ndarray, at_least: int = 1) -> np.ndarray:
    x = np.asarray(honest)
    if x.ndim != 2 or x.shape[0] < at_least:
        raise ValueError(f"honest must be an (n_h, d) array with n_h >= {at_least}; got {x.shape}")
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def sign_flip(honest: np.ndarray) -> np.ndarray:
    """``-(1/n_h) sum_i x_i``."""
    x = _honest(honest)
    return -x.mean(axis=0)


def alie_z_max(n: int, f: int) -> float:
    """The ALIE factor of Baruch et al. (2019), their z_max: with ``s = floor(n/2 + 1) - f``
    honest workers to sway, ``z_max = Phi^{-1}((n - s) / n)``.

    ``n`` counts every worker (honest and Byzantine). ``z_max`` is 0 or negative when
    ``f`` is too small to sway a majority (``(n - s)/n <= 1/2``).
    """
    if not 0 < f < n:
        raise ValueError(f"ALIE needs 0 < f < n; got f={f}, n={n}")
    s = n // 2 + 1 - f
    if s <= 0:
        raise ValueError(f"ALIE's z_max is unbounded when f >= n/2 + 1; got f={f}, n={n}")
    return NormalDist().inv_cdf((n - s) / n)  # z_max = Phi^{-1}((n - s)/n)


def alie(honest: np.ndarray, c: float) -> np.ndarray:
    """``mean + c * std``, coordinate-wise, std with ``ddof=1`` (as ByzFL)."""
    x = _honest(honest, at_least=2)
    return x.mean(axis=0) + c * x.std(axis=0, ddof=1)


def foe(honest: np.ndarray, c: float) -> np.ndarray:
    """Fall of Empires: ``(1 - c) * mean``."""
    return (1.0 - c) * _honest(honest).mean(axis=0)


def ipm(honest: np.ndarray, eps: float) -> np.ndarray:
    """Inner-product manipulation: ``-eps * mean`` (FOE with ``c = 1 + eps``)."""
    return -eps * _honest(honest).mean(axis=0)


def flip_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """``y -> (C - 1) - y`` (MoNNA paper's label flipping: ``y -> 9 - y`` on MNIST)."""
    y = np.asarray(y)
    if num_classes < 2:
        raise ValueError(f"label flipping needs at least 2 classes; got {num_classes}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}); got [{y.min()}, {y.max()}]")
    return (num_classes - 1) - y


class MimicState(NamedTuple):
    """The mimic heuristic's running estimates (Karimireddy et al. 2022, App. on mimic).

    mu : (d,) running mean of the honest vectors over the warm-up rounds.
    z  : (d,) unit vector, running estimate of the top principal direction of the honest
         vectors (where they disagree most).
    t  : number of rounds folded in.
    """

    mu: np.ndarray
    z: np.ndarray
    t: int


def mimic_init(d: int, rng: np.random.Generator) -> MimicState:
    """``mu = 0``, ``z`` a random unit vector, ``t = 0``."""
    z = rng.normal(size=d)
    return MimicState(mu=np.zeros(d), z=z / np.linalg.norm(z), t=0)


def mimic_update(state: MimicState, honest: np.ndarray) -> MimicState:
    """Fold one round into the estimates (one step of online power iteration)::

        mu' = (t mu + mean(x)) / (t + 1)
        v   = sum_i <x_i - mu', z> (x_i - mu');   v = v / |v|
        z'  = normalise(t/(t+1) z + v/(t+1))
    """
    x = _honest(honest).astype(np.float64)
    t = state.t
    mu = (t * state.mu + x.mean(axis=0)) / (t + 1)
    dev = x - mu
    v = dev.T @ (dev @ state.z)
    nv = np.linalg.norm(v)
    z = state.z * t / (t + 1) + (v / nv if nv > 0 else 0.0) / (t + 1)
    nz = np.linalg.norm(z)
    return MimicState(mu=mu, z=z / nz if nz > 0 else state.z, t=t + 1)


def mimic_target(state: MimicState, honest: np.ndarray) -> int:
    """The honest row farthest along ``z``: ``argmax_i |<x_i - mu, z>|``."""
    x = _honest(honest).astype(np.float64)
    return int(np.argmax(np.abs((x - state.mu) @ state.z)))


# ----------------------------------------------------------------------------------------
# Registered attacks
# ----------------------------------------------------------------------------------------


def _repeat(v: np.ndarray, f: int, like: np.ndarray) -> np.ndarray:
    out = np.repeat(np.asarray(v)[None, :], f, axis=0)
    return out.astype(like.dtype) if np.issubdtype(np.asarray(like).dtype, np.floating) else out


@ATTACKS.register("sign_flip")
class SignFlip(ServerAttack):
    """Omniscient sign flipping: every Byzantine row is ``-mean(honest)``."""

    name = "sign_flip"

    def forge(self, honest: np.ndarray, num_byzantine: int, rng: np.random.Generator) -> np.ndarray:
        return _repeat(sign_flip(honest), num_byzantine, honest)


@ATTACKS.register("alie")
class ALIE(ServerAttack):
    """A Little Is Enough: ``mean + c * std``.

    Parameters
    ----------
    c : float, optional
        The factor; default :func:`alie_z_max` of ``n = n_h + f``, computed each round.
    """

    name = "alie"

    def __init__(self, c: float | None = None) -> None:
        self.c = c

    def forge(self, honest: np.ndarray, num_byzantine: int, rng: np.random.Generator) -> np.ndarray:
        n = np.asarray(honest).shape[0] + num_byzantine
        c = alie_z_max(n, num_byzantine) if self.c is None else self.c
        return _repeat(alie(honest, c), num_byzantine, honest)


@ATTACKS.register("foe")
class FOE(ServerAttack):
    """Fall of Empires: ``(1 - c) * mean``; ``c = 3`` by default (ByzFL's default)."""

    name = "foe"

    def __init__(self, c: float = 3.0) -> None:
        self.c = c

    def forge(self, honest: np.ndarray, num_byzantine: int, rng: np.random.Generator) -> np.ndarray:
        return _repeat(foe(honest, self.c), num_byzantine, honest)


@ATTACKS.register("ipm")
class IPM(ServerAttack):
    """Inner-product manipulation: ``-eps * mean``; ``eps = 0.1`` by default (Xie et al.)."""

    name = "ipm"

    def __init__(self, eps: float = 0.1) -> None:
        self.eps = eps

    def forge(self, honest: np.ndarray, num_byzantine: int, rng: np.random.Generator) -> np.ndarray:
        return _repeat(ipm(honest, self.eps), num_byzantine, honest)


@ATTACKS.register("mimic")
class Mimic(ServerAttack):
    """Copy one honest vector, over-weighting that client.

    Parameters
    ----------
    target : int, optional
        The honest row to copy (rows in the order the server stacks them). Default: drawn
        with the round's ``rng`` on the first call, then kept.
    warmup : int
        0: always copy ``target``. ``> 0``: Karimireddy et al.'s heuristic: for ``warmup``
        rounds copy ``target`` while estimating the direction of largest honest spread
        (:func:`mimic_update`); after that, copy the honest row farthest along it
        (:func:`mimic_target`), re-chosen each round with the direction frozen.

    State (plain arrays, checkpointable): ``target_``, ``state_``.
    """

    name = "mimic"

    def __init__(self, target: int | None = None, warmup: int = 0) -> None:
        if target is not None and target < 0:
            raise ValueError(f"mimic target must be a row index >= 0; got {target}")
        if warmup < 0:
            raise ValueError(f"mimic warmup must be >= 0 rounds; got {warmup}")
        self.target_ = target
        self.warmup = warmup
        self.state_: MimicState | None = None

    def forge(self, honest: np.ndarray, num_byzantine: int, rng: np.random.Generator) -> np.ndarray:
        x = _honest(honest)
        if self.target_ is None:
            self.target_ = int(rng.integers(x.shape[0]))
        if self.target_ >= x.shape[0]:
            raise ValueError(f"mimic target {self.target_} out of range for {x.shape[0]} honest rows")
        row = self.target_
        if self.warmup > 0:
            if self.state_ is None:
                self.state_ = mimic_init(x.shape[1], rng)
            if self.state_.t < self.warmup:
                self.state_ = mimic_update(self.state_, x)
            else:
                row = mimic_target(self.state_, x)
        return _repeat(x[row], num_byzantine, x)


@ATTACKS.register("sign_flip_own")
class SignFlipOwn(ClientAttack):
    """Client-side sign flip of the client's own update: ``-scale * update``."""

    name = "sign_flip_own"

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def corrupt(self, update: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        return [np.asarray(-self.scale * np.asarray(u), dtype=np.asarray(u).dtype) for u in update]


@ATTACKS.register("gaussian")
class Gaussian(ClientAttack):
    """Send ``N(mean, std^2)`` noise in every coordinate (``additive``: add it to the update).

    Runs on the client: needs nothing but its own update and the seeded ``rng``.
    """

    name = "gaussian"

    def __init__(self, std: float = 1.0, mean: float = 0.0, additive: bool = False) -> None:
        if not std >= 0:
            raise ValueError(f"Gaussian attack needs std >= 0; got {std}")
        self.std, self.mean, self.additive = std, mean, additive

    def corrupt(self, update: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        out = []
        for u in update:
            u = np.asarray(u)
            noise = rng.normal(self.mean, self.std, size=u.shape)
            out.append(np.asarray(u + noise if self.additive else noise, dtype=u.dtype))
        return out


@ATTACKS.register("label_flip")
class LabelFlip(ClientAttack):
    """Data-side: the client trains honestly on flipped labels ``y -> (C - 1) - y`` and
    sends what it computed; its update passes through unchanged."""

    name = "label_flip"

    def corrupt(self, update: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        return [np.asarray(u) for u in update]

    def corrupt_labels(self, y: np.ndarray, num_classes: int) -> np.ndarray:
        return flip_labels(y, num_classes)
