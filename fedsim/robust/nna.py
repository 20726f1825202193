"""Nearest-neighbour averaging (NNA), the mixing step of MoNNA.

Farhadkhani, Guerraoui, Gupta, Hoang, Pinot, Stephan, "Robust Collaborative Learning with
Linear Gradient Overhead", ICML 2023 (PMLR 202), https://arxiv.org/abs/2209.10931
(Algorithm 1, MoNNA; its mixing step is NNA).

An honest worker holds a set ``R_i`` of vectors that includes its own half-step model
``h_i`` (the *pivot*). NNA drops the ``f`` vectors of ``R_i`` farthest from the pivot and
averages the rest::

    NNA_i(R_i) = mean of the |R_i| - f vectors of R_i nearest to h_i (L2)

Which vectors a worker holds is the ``rule``:

``"reference"``  (the paper's code) the worker waits for ``n - f`` vectors: ``|R_i| = n - f``,
                 it keeps the ``n - 2f`` nearest.
``"byzfl"``      (ByzFL's ``MoNNA(f)``) the worker uses all ``n`` vectors: ``|R_i| = n``, it
                 keeps the ``n - f`` nearest.

Both rules are the same operator ("drop the f farthest of what you hold") on a different
``R_i``. Both need an honest majority, ``2f < n``.

In fedsim the server holds every vector of the round and mixes for every client at once
(:func:`nna_mix`): the pairwise distances are computed once, and the selection is one
``(p, n)`` weight matrix applied with a single matrix product.

Non-finite vectors are rejected (the strategy wrapper validates payloads before mixing,
so one here is a bug in the caller, not an attack to absorb).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

Rule = Literal["reference", "byzfl"]
RULES: tuple[Rule, ...] = ("reference", "byzfl")

# Columns per block when accumulating the Gram matrix: bounds the float64 scratch memory
# to n * _CHUNK * 8 bytes whatever the model size.
_CHUNK = 1 << 16


def check_honest_majority(n: int, f: int, what: str = "NNA") -> None:
    """Raise ``ValueError`` unless ``0 <= f`` and ``2f < n``.

    The nearest ``n - 2f`` (or ``n - f``) vectors to an honest pivot contain a majority of
    honest ones only when the honest workers are a majority.
    """
    if n < 1:
        raise ValueError(f"{what} needs at least one vector; got n={n}")
    if f < 0:
        raise ValueError(f"{what} needs f >= 0 Byzantine workers; got f={f}")
    if not 2 * f < n:
        raise ValueError(
            f"{what} needs 2f < n (an honest majority, so that the vectors nearest an honest "
            f"pivot are mostly honest); got f={f}, n={n}"
        )


def check_rule(rule: str) -> Rule:
    """Return ``rule`` if known, else raise ``ValueError`` listing the known rules."""
    if rule not in RULES:
        raise ValueError(f"unknown NNA rule {rule!r}; known: {', '.join(RULES)}")
    return rule


def received_count(n: int, f: int, rule: Rule) -> int:
    """How many vectors a worker holds, its own included: ``n - f`` or ``n``."""
    return n - f if check_rule(rule) == "reference" else n


def kept_count(n: int, f: int, rule: Rule) -> int:
    """How many vectors NNA averages: ``n - 2f`` (reference) or ``n - f`` (byzfl)."""
    return received_count(n, f, rule) - f


def _as_matrix(vectors: np.ndarray, what: str = "vectors") -> np.ndarray:
    x = np.asarray(vectors)
    if x.ndim != 2:
        raise ValueError(f"{what} must be an (n, d) array; got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} contain NaN or inf: validate payloads before mixing")
    return x


def _gram(x: np.ndarray, centre: np.ndarray | None) -> np.ndarray:
    """``G = (X - c)(X - c)^T`` in float64, accumulated over column blocks."""
    n, d = x.shape
    gram = np.zeros((n, n), dtype=np.float64)
    for start in range(0, d, _CHUNK):
        block = x[:, start : start + _CHUNK].astype(np.float64)
        if centre is not None:
            block -= centre[start : start + _CHUNK]
        gram += block @ block.T
    return gram


def _sq_from_gram(gram: np.ndarray) -> np.ndarray:
    sq = np.diag(gram)
    dist = sq[:, None] + sq[None, :] - 2.0 * gram  # |x_i - x_j|^2 = |x_i|^2 + |x_j|^2 - 2<x_i, x_j>
    np.maximum(dist, 0.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    return dist


def pairwise_sq_distances(vectors: np.ndarray) -> np.ndarray:
    """Squared L2 distances between the rows of ``vectors``, ``(n, n)`` float64.

    ``D_ij = |x_i - c|^2 + |x_j - c|^2 - 2 <x_i - c, x_j - c>`` (Gram form, one matrix
    product per column block). The rounding error of that form grows with ``|x - c|^2``,
    and half-step models near convergence differ by far less than their norm, so two
    passes: a first, uncentred pass picks the row whose median distance to the others is
    smallest (an honest one when honest rows are a majority); the second pass centres
    every row at it. The diagonal is exactly 0.
    """
    x = _as_matrix(vectors)
    if x.shape[0] <= 2:
        return _sq_from_gram(_gram(x, x[0].astype(np.float64)))
    rough = _sq_from_gram(_gram(x, None))
    centre = int(np.argmin(np.median(rough, axis=1)))
    return _sq_from_gram(_gram(x, x[centre].astype(np.float64)))


def nna(pivot: np.ndarray, vectors: np.ndarray, f: int, rule: Rule = "reference") -> np.ndarray:
    """Nearest-neighbour average of ``vectors`` around ``pivot`` (NNA, MoNNA Algorithm 1).

    Parameters
    ----------
    pivot : (d,) array
        The worker's own half-step model ``h_i``.
    vectors : (m, d) array
        What the worker holds, ``R_i``, its own vector included: ``m = n - f`` under
        ``rule="reference"``, ``m = n`` under ``rule="byzfl"``.
    f : int
        Number of Byzantine workers tolerated.
    rule : {"reference", "byzfl"}
        Only fixes how ``n`` follows from ``m`` for the ``2f < n`` check; in both cases the
        ``m - f`` rows nearest the pivot are averaged.

    Returns
    -------
    (d,) array
        ``mean of the m - f rows of vectors nearest to pivot`` (ties broken by row order).
    """
    x = _as_matrix(vectors)
    p = np.asarray(pivot, dtype=x.dtype).reshape(-1)
    if p.shape[0] != x.shape[1] or not np.all(np.isfinite(p)):
        raise ValueError(f"pivot must be a finite vector of length {x.shape[1]}; got {p.shape}")
    m = x.shape[0]
    n = m + f if check_rule(rule) == "reference" else m
    check_honest_majority(n, f)
    dist = pairwise_sq_distances(np.vstack([p[None, :], x]))[0, 1:]
    keep = np.argsort(dist, kind="stable")[: m - f]
    return np.asarray(x[keep].mean(axis=0), dtype=x.dtype)  # (1/(m-f)) sum_{j nearest} x_j


def received_sets(
    n: int,
    f: int,
    pivots: Sequence[int],
    *,
    byzantine: Sequence[int] = (),
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Who each pivot heard from under ``rule="reference"``: ``(p, n)`` bool mask.

    Each pivot holds its own vector and ``n - f - 1`` others. The rows in ``byzantine``
    always arrive (the worst case of the analysis: the adversary is never slow); the other
    slots are drawn without replacement from the remaining rows with ``rng``. ``rng`` may
    be omitted only when there is nothing to draw (every other row fits).
    """
    byz = sorted(set(int(b) for b in byzantine))
    if len(byz) > f:
        raise ValueError(f"{len(byz)} Byzantine rows given but only f={f} are tolerated")
    if any(not 0 <= b < n for b in byz):
        raise ValueError(f"Byzantine rows must be in [0, {n}); got {byz}")
    slots = n - f - 1  # others a worker waits for, its own vector aside
    mask = np.zeros((len(pivots), n), dtype=bool)
    for row, i in enumerate(pivots):
        if i in byz:
            raise ValueError(f"row {i} is both a pivot and Byzantine")
        mask[row, i] = True
        mask[row, byz] = True
        pool = np.array([j for j in range(n) if j != i and j not in byz], dtype=np.int64)
        need = slots - len(byz)
        if need in (0, len(pool)):  # nothing to draw
            mask[row, pool[:need]] = True
        else:
            if rng is None:
                raise ValueError(
                    "rule='reference' draws which n-f-1 other vectors each worker received; "
                    "pass rng= (or received=)"
                )
            mask[row, rng.choice(pool, size=need, replace=False)] = True
    return mask


def nna_weights(
    dist: np.ndarray,
    f: int,
    *,
    rule: Rule = "reference",
    pivots: Sequence[int] | None = None,
    received: np.ndarray | None = None,
    byzantine: Sequence[int] = (),
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """The mixing matrix ``W`` (p, n) with ``theta_pivot = W @ vectors``.

    Row ``r`` has ``1 / (|R_i| - f)`` on the ``|R_i| - f`` vectors of ``R_i`` nearest
    pivot ``i = pivots[r]`` and 0 elsewhere. ``dist`` is :func:`pairwise_sq_distances`.
    See :func:`nna_mix` for the other parameters.
    """
    n = dist.shape[0]
    check_honest_majority(n, f)
    rule = check_rule(rule)
    byz = set(int(b) for b in byzantine)
    piv = [i for i in range(n) if i not in byz] if pivots is None else [int(i) for i in pivots]
    if any(not 0 <= i < n for i in piv):
        raise ValueError(f"pivots must be rows in [0, {n}); got {piv}")
    if not piv:
        return np.zeros((0, n), dtype=np.float64)
    if rule == "byzfl":
        held = np.ones((len(piv), n), dtype=bool)
    elif received is not None:
        held = np.asarray(received, dtype=bool)
        if held.shape != (len(piv), n) or not np.all(held.sum(axis=1) == n - f):
            raise ValueError(f"received must be a ({len(piv)}, {n}) mask with n-f={n - f} per row")
        if not np.all(held[np.arange(len(piv)), piv]):
            raise ValueError("every worker holds its own vector: received[r, pivots[r]] must be True")
    else:
        held = received_sets(n, f, piv, byzantine=sorted(byz), rng=rng)
    keep = int(held[0].sum()) - f
    masked = np.where(held, dist[piv], np.inf)
    # The pivot sorts first (distance 0, and its own column first on ties with copies).
    masked[np.arange(len(piv)), piv] = -1.0
    nearest = np.argsort(masked, axis=1, kind="stable")[:, :keep]
    w = np.zeros((len(piv), n), dtype=np.float64)
    w[np.arange(len(piv))[:, None], nearest] = 1.0 / keep
    return w


def nna_mix(
    vectors: np.ndarray,
    f: int,
    *,
    rule: Rule = "reference",
    pivots: Sequence[int] | None = None,
    received: np.ndarray | None = None,
    byzantine: Sequence[int] = (),
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """The server's MoNNA mixing step: NNA around every pivot at once.

    Parameters
    ----------
    vectors : (n, d) array
        Every vector of the round (half-step models), honest and Byzantine.
    f : int
        Byzantine workers tolerated; needs ``2f < n``.
    rule : {"reference", "byzfl"}
        ``"reference"``: each pivot holds ``n - f`` vectors and averages the ``n - 2f``
        nearest; ``"byzfl"``: each pivot holds all ``n`` and averages the ``n - f`` nearest.
    pivots : sequence of int, optional
        Rows to mix for (clients that need a model back); default: every row not in
        ``byzantine``.
    received : (p, n) bool array, optional
        ``rule="reference"`` only: who each pivot heard from (own row included, ``n - f``
        per row). Default: :func:`received_sets` with ``byzantine`` and ``rng``.
    byzantine : sequence of int
        Rows forged by omniscient attackers (excluded from the default pivots; under
        ``"reference"`` they always arrive).
    rng : numpy Generator, optional
        Draws the received sets under ``"reference"`` when there is a choice.

    Returns
    -------
    (p, d) array
        ``theta_i = NNA_i(R_i)`` for each pivot, in the order of ``pivots``.
    """
    x = _as_matrix(vectors)
    w = nna_weights(
        pairwise_sq_distances(x), f, rule=rule, pivots=pivots, received=received,
        byzantine=byzantine, rng=rng,
    )
    return w.astype(x.dtype) @ x  # theta_i = sum_j W_ij x_j


def nna_aggregator(rule: Rule = "byzfl", seed: int = 0) -> Callable[[np.ndarray, int], np.ndarray]:
    """NNA as an ``(vectors, f) -> (n - f, d)`` aggregator, for the attacks' line search.

    Takes the stack ``[honest; forged]`` (honest rows first, the last ``f`` forged), mixes
    around every honest row and returns the ``n - f`` mixed models. Under
    ``rule="reference"`` the received sets come from a fresh ``default_rng(seed)`` on each
    call, so every candidate of a line search faces the same arrivals.
    """
    check_rule(rule)

    def mix_honest(vectors: np.ndarray, f: int) -> np.ndarray:
        n = np.asarray(vectors).shape[0]
        return nna_mix(vectors, f, rule=rule, pivots=range(n - f), byzantine=range(n - f, n),
                       rng=np.random.default_rng(seed))

    return mix_honest
