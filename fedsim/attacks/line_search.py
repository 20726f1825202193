"""Line search over an attack's factor: the factor that hurts a given aggregator most.

The MoNNA paper (Farhadkhani et al., ICML 2023, experiments) sets the factor of ALIE and FOE by
a line search that maximises the harm to the defence; ByzFL's ``LineMaximize`` does the
same with an expanding/contracting search. Here the search is over an explicit grid of
candidates, the harm being the distance of the aggregate from the honest mean.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from .base import ServerAttack
from .byzantine import _honest

AttackFactory = Callable[[float], ServerAttack]
Aggregate = Callable[[np.ndarray, int], np.ndarray]


class LineSearchResult(NamedTuple):
    """factor : the candidate that hurt most; distance : its harm; distances : every
    candidate's harm, in the order given."""

    factor: float
    distance: float
    distances: np.ndarray


def attack_harm(aggregate_out: np.ndarray, honest_mean: np.ndarray, reduce: str = "mean") -> float:
    """``|agg - mean(honest)|``; for an ``(k, d)`` output (one model per client, as NNA
    returns) the ``mean`` or ``max`` of the row distances."""
    out = np.asarray(aggregate_out, dtype=np.float64)
    if out.ndim == 1:
        return float(np.linalg.norm(out - honest_mean))
    dist = np.linalg.norm(out - honest_mean[None, :], axis=1)
    reducers: dict[str, Callable[[np.ndarray], np.floating]] = {"mean": np.mean, "max": np.max}
    if reduce not in reducers:
        raise ValueError(f"unknown reduce {reduce!r}; known: {', '.join(reducers)}")
    return float(reducers[reduce](dist))


def line_search(
    attack_factory: AttackFactory,
    aggregator: Aggregate,
    honest: np.ndarray,
    f: int,
    candidates: Sequence[float],
    *,
    rng: np.random.Generator | None = None,
    reduce: str = "mean",
) -> LineSearchResult:
    """The factor among ``candidates`` whose attack hurts ``aggregator`` most.

    For each ``c``: forge ``f`` rows with ``attack_factory(c)``, aggregate the stack
    ``[honest; forged]`` (honest rows first) with ``aggregator(stack, f)``, and measure
    :func:`attack_harm` against the honest mean. Every candidate sees the same random
    numbers (one seed drawn from ``rng``). Ties go to the earlier candidate.
    """
    x = _honest(honest)
    cands = [float(c) for c in candidates]
    if not cands:
        raise ValueError("line search needs at least one candidate factor")
    if f < 1:
        raise ValueError(f"line search needs f >= 1 Byzantine rows; got f={f}")
    base = int((rng or np.random.default_rng(0)).integers(2**63))
    target = x.astype(np.float64).mean(axis=0)
    harms = np.empty(len(cands))
    for k, c in enumerate(cands):
        forged = attack_factory(c).forge(x, f, np.random.default_rng(base))
        harms[k] = attack_harm(aggregator(np.vstack([x, forged]), f), target, reduce)
    best = int(np.argmax(harms))
    return LineSearchResult(factor=cands[best], distance=float(harms[best]), distances=harms)


class LineSearchAttack(ServerAttack):
    """Re-run :func:`line_search` every round and forge with the worst factor.

    Not registered: it needs the strategy's aggregator, which the integration supplies
    (e.g. ``LineSearchAttack(lambda c: ALIE(c=c), nna_aggregator, candidates)``).
    ``last_factor`` holds the factor chosen in the latest round (for logging).
    """

    name = "line_search"

    def __init__(
        self, attack_factory: AttackFactory, aggregator: Aggregate,
        candidates: Sequence[float], reduce: str = "mean",
    ) -> None:
        if not list(candidates):
            raise ValueError("line search needs at least one candidate factor")
        self.attack_factory, self.aggregator = attack_factory, aggregator
        self.candidates, self.reduce = [float(c) for c in candidates], reduce
        self.last_factor: float | None = None

    def forge(self, honest: np.ndarray, num_byzantine: int, rng: np.random.Generator) -> np.ndarray:
        res = line_search(self.attack_factory, self.aggregator, honest, num_byzantine,
                          self.candidates, rng=rng, reduce=self.reduce)
        self.last_factor = res.factor
        return self.attack_factory(res.factor).forge(honest, num_byzantine, rng)
