"""Robust aggregation rules and NNM pre-aggregation, as pure functions on an (n, d) array.

Every rule has the signature ``rule(vectors, f) -> (d,)`` (:data:`Aggregator`), so a
rule, NNM in front of a rule (:func:`with_nnm`) and the line search of the attacks
(:func:`fedsim.attacks.byzantine.line_search`) compose freely.

- NNM: Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by Mixing: A
  Recipe for Optimal Byzantine ML under Heterogeneity", AISTATS 2023 (PMLR 206),
  https://arxiv.org/abs/2302.01772 (Algorithm 1, Nearest Neighbor Mixing).
- Coordinate-wise trimmed mean and median: Yin, Chen, Ramchandran, Bartlett,
  "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates", ICML 2018.
- Krum / multi-Krum: Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with
  Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .nna import _as_matrix, check_honest_majority, nna_mix, pairwise_sq_distances

Aggregator = Callable[[np.ndarray, int], np.ndarray]


def _out(x: np.ndarray, value: np.ndarray) -> np.ndarray:
    return np.asarray(value, dtype=x.dtype)


def mean(vectors: np.ndarray, f: int = 0) -> np.ndarray:
    """Plain average (FedAvg with equal weights); ``f`` is accepted and ignored."""
    x = _as_matrix(vectors)
    return _out(x, x.mean(axis=0))


def nnm(vectors: np.ndarray, f: int) -> np.ndarray:
    """Nearest Neighbor Mixing (Allouah et al. 2023, Algorithm 1): ``(n, d) -> (n, d)``.

    Every vector is replaced by the mean of its ``n - f`` nearest neighbours among all
    ``n`` (itself included)::

        y_i = (1 / (n - f)) * sum_{j in N_i} x_j,   N_i = the n - f rows nearest x_i

    This is NNA with ``rule="byzfl"`` and every row as a pivot. Needs ``2f < n``.
    """
    x = _as_matrix(vectors)
    check_honest_majority(x.shape[0], f, "NNM")
    return nna_mix(x, f, rule="byzfl", pivots=range(x.shape[0]))


def trimmed_mean(vectors: np.ndarray, f: int) -> np.ndarray:
    """Coordinate-wise trimmed mean: per coordinate drop the ``f`` largest and ``f``
    smallest values and average the ``n - 2f`` left. Needs ``2f < n``."""
    x = _as_matrix(vectors)
    n = x.shape[0]
    check_honest_majority(n, f, "trimmed mean")
    s = np.sort(x, axis=0)
    return _out(x, s[f : n - f].mean(axis=0))  # (1/(n-2f)) sum_{k=f}^{n-f-1} x_(k)


def coordinate_median(vectors: np.ndarray, f: int = 0) -> np.ndarray:
    """Coordinate-wise median; ``f`` is only checked (``2f < n``, its breakdown point)."""
    x = _as_matrix(vectors)
    check_honest_majority(x.shape[0], f, "coordinate-wise median")
    return _out(x, np.median(x, axis=0))


def _check_krum(n: int, f: int, what: str) -> None:
    check_honest_majority(n, f, what)
    if not 2 * f + 2 < n:
        raise ValueError(
            f"{what} needs 2f + 2 < n (each score sums the n - f - 2 nearest distances, "
            f"Blanchard et al. 2017); got f={f}, n={n}"
        )


def krum_scores(vectors: np.ndarray, f: int) -> np.ndarray:
    """Krum score of every row: the sum of its ``n - f - 2`` smallest squared distances to
    the other rows (Blanchard et al. 2017)."""
    x = _as_matrix(vectors)
    n = x.shape[0]
    _check_krum(n, f, "Krum")
    d = pairwise_sq_distances(x)
    np.fill_diagonal(d, np.inf)  # a row is not its own neighbour
    k = n - f - 2
    return np.sort(d, axis=1)[:, :k].sum(axis=1)  # s_i = sum_{j in N_i, |N_i|=n-f-2} |x_i-x_j|^2


def multi_krum(vectors: np.ndarray, f: int, m: int = 1) -> np.ndarray:
    """Mean of the ``m`` rows with the lowest Krum scores (``m = 1`` is Krum); ties go to
    the lower row index."""
    x = _as_matrix(vectors)
    n = x.shape[0]
    if not 1 <= m <= n:
        raise ValueError(f"multi-Krum needs 1 <= m <= n; got m={m}, n={n}")
    best = np.argsort(krum_scores(x, f), kind="stable")[:m]
    return _out(x, x[best].mean(axis=0))


def krum(vectors: np.ndarray, f: int) -> np.ndarray:
    """Krum: the row with the lowest Krum score."""
    return multi_krum(vectors, f, m=1)


def with_nnm(aggregate: Aggregator) -> Aggregator:
    """``aggregate`` with NNM in front: ``vectors, f -> aggregate(nnm(vectors, f), f)``."""

    def nnm_then(vectors: np.ndarray, f: int) -> np.ndarray:
        return aggregate(nnm(vectors, f), f)

    nnm_then.__name__ = f"nnm_{getattr(aggregate, '__name__', 'aggregate')}"
    return nnm_then


AGGREGATORS: dict[str, Aggregator] = {
    "mean": mean,
    "trimmed_mean": trimmed_mean,
    "median": coordinate_median,
    "krum": krum,
    "multi_krum": lambda v, f: multi_krum(v, f, m=max(1, v.shape[0] - f)),
}


def get_aggregator(name: str) -> Aggregator:
    """An aggregator by name; ``"nnm+<name>"`` puts NNM in front. Unknown names list the known."""
    base = name.removeprefix("nnm+")
    if base not in AGGREGATORS:
        known = ", ".join(sorted(AGGREGATORS))
        raise ValueError(f"unknown aggregator {name!r}; known: {known} (each also as 'nnm+<name>')")
    agg = AGGREGATORS[base]
    return with_nnm(agg) if name.startswith("nnm+") else agg
