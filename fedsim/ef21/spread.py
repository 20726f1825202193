"""Spreading the smoothness constants: the feature scale that sets ``L_QM / L_AM``.

EF21-W's gain over EF21 (Richtarik, Gasanov, Burlachenko, "Error Feedback Reloaded: From
Quadratic to Arithmetic Mean of Smoothness Constants", ICLR 2024) is at most the ratio of
the two step sizes' constants, ``L_QM / L_AM``. Its experiments (Section 4) make the ratio
large by giving some clients much larger ``L_i``; here, as there, by scaling a client's
features. For the papers' logistic regression (:mod:`fedsim.problems.logreg`)

    L_i = lambda_max(A_i^T A_i) / (4 m_i) + 2 lam,

so features scaled by ``s`` (``A_i -> s A_i``) give ``L_i(s) = s^2 (L_i - 2 lam) + 2 lam``:
affine in ``u = s^2``. With the same ``u`` on a set S of clients,

    n sum_i L_i(u)^2 = T^2 (sum_i L_i(u))^2

is a quadratic in ``u`` whose largest root is the scale that gives ``L_QM / L_AM = T``.

By Cauchy-Schwarz ``L_QM / L_AM <= sqrt(n)`` for any ``L_i``; with S scaled alone the
ratio tends to ``sqrt(n sum_S a_i^2) / sum_S a_i`` (``a_i = L_i - 2 lam``; ``sqrt(n/|S|)``
for equal ``a_i``) as ``s -> inf`` and never reaches it: a target at or above that is
refused. Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from .theory import l_am, l_qm, positive_vector

__all__ = ["qm_am_ratio", "ratio_limit", "scale_for_ratio", "scaled_smoothness"]


def qm_am_ratio(L: ArrayLike) -> float:
    """``L_QM / L_AM`` (>= 1, <= sqrt(n)): the largest gain EF21-W's step can give."""
    return l_qm(L) / l_am(L)


def _split(L: ArrayLike, scaled: Sequence[int], fixed_part: float) -> tuple[np.ndarray, np.ndarray]:
    v = positive_vector(L, "smoothness constants L_i")
    idx = np.asarray(scaled, dtype=np.int64)
    if idx.ndim != 1 or idx.size == 0 or len(set(idx.tolist())) != idx.size:
        raise ValueError(f"need one or more distinct client indices to scale; got {list(scaled)}")
    if np.any(idx < 0) or np.any(idx >= v.size):
        raise ValueError(f"client indices must be in [0, {v.size}); got {idx.tolist()}")
    if not (fixed_part >= 0 and math.isfinite(fixed_part)):
        raise ValueError(f"the unscaled part of L_i (2 lam) must be finite and >= 0; got {fixed_part!r}")
    a = v[idx] - fixed_part  # the part of L_i that scales with s^2
    if np.any(a <= 0):
        raise ValueError(f"L_i of a scaled client must exceed the unscaled part {fixed_part}; got {v[idx]}")
    return v, a


def scaled_smoothness(L: ArrayLike, scaled: Sequence[int], s: float, fixed_part: float) -> np.ndarray:
    """The ``L_i`` after the clients in ``scaled`` have their features times ``s``:
    ``L_i(s) = s^2 (L_i - fixed_part) + fixed_part`` (``fixed_part = 2 lam``)."""
    if not (s > 0 and math.isfinite(s)):
        raise ValueError(f"feature scale must be finite and > 0; got {s!r}")
    v, a = _split(L, scaled, fixed_part)
    out = v.copy()
    out[np.asarray(scaled, dtype=np.int64)] = s * s * a + fixed_part  # s^2 (L_i - 2 lam) + 2 lam
    return out


def ratio_limit(L: ArrayLike, scaled: Sequence[int], fixed_part: float) -> float:
    """``lim_{s->inf} L_QM/L_AM`` with the clients in ``scaled`` scaled:
    ``sqrt(n sum_S a_i^2) / sum_S a_i``, never attained."""
    v, a = _split(L, scaled, fixed_part)
    return float(math.sqrt(v.size * float(a @ a)) / float(a.sum()))


def scale_for_ratio(L: ArrayLike, scaled: Sequence[int], target: float, fixed_part: float) -> float:
    """The feature scale ``s >= 1`` on the clients in ``scaled`` that makes ``L_QM/L_AM = target``.

    Solves ``n sum_i L_i(u)^2 = T^2 (sum_i L_i(u))^2`` for ``u = s^2`` (a quadratic:
    see the module docstring) and returns ``sqrt`` of its largest root. Returns 1.0 when
    the unscaled ``L_i`` already reach the target (no root above 1). Raises when the
    target is at or above :func:`ratio_limit`, which no finite scale reaches.

    Parameters
    ----------
    L : array_like
        The unscaled ``L_i``, one per client.
    scaled : sequence of int
        The clients whose features are scaled (all by the same ``s``).
    target : float
        The ``L_QM / L_AM`` wanted, >= 1.
    fixed_part : float
        The part of every ``L_i`` that does not scale with the features (``2 lam``).
    """
    v, a = _split(L, scaled, fixed_part)
    if not (target >= 1 and math.isfinite(target)):
        raise ValueError(f"L_QM/L_AM is >= 1; got target {target!r}")
    limit = ratio_limit(v, scaled, fixed_part)
    if target >= limit:
        raise ValueError(
            f"L_QM/L_AM = {target:g} is out of reach scaling {len(a)} of {v.size} clients: the ratio "
            f"tends to {limit:.4g} as the scale grows (and is at most sqrt(n) = {math.sqrt(v.size):.4g} "
            "for any L_i); use more clients or scale fewer")
    if qm_am_ratio(v) >= target:
        return 1.0
    n, c = v.size, fixed_part
    rest = np.delete(v, np.asarray(scaled, dtype=np.int64))
    P = float(a.sum())  # sum_i L_i(u) = P u + Q
    Q = a.size * c + float(rest.sum())
    C0 = a.size * c * c + float(rest @ rest)  # sum_i L_i(u)^2 = (a.a) u^2 + 2 c P u + C0
    T2 = target * target
    qa = n * float(a @ a) - T2 * P * P  # > 0 below the limit
    qb = 2.0 * n * c * P - 2.0 * T2 * P * Q
    qc = n * C0 - T2 * Q * Q
    disc = qb * qb - 4.0 * qa * qc
    u = (-qb + math.sqrt(max(disc, 0.0))) / (2.0 * qa)  # the largest root
    return math.sqrt(max(u, 1.0))
