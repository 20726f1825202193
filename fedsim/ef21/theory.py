"""EF21 / EF21-W theory: weights, smoothness means and step sizes (numpy only).

Richtarik, Sokolov, Fatkhullin, "EF21", NeurIPS 2021 (Theorem 1) and Richtarik,
Gasanov, Burlachenko, "Error Feedback Reloaded", ICLR 2024 (Algorithm 2, Theorem 2);
see :mod:`fedsim.strategies.ef21w` for the algorithm. Theorem numbers follow the
arXiv versions.

    theta = 1 - sqrt(1 - alpha),  beta = (1 - alpha) / (1 - sqrt(1 - alpha))
    EF21:   gamma <= 1 / (L + L_QM sqrt(beta/theta)),  L_QM = sqrt((1/n) sum_i L_i^2)
    EF21-W: gamma <= 1 / (L + L_AM sqrt(beta/theta)),  L_AM = (1/n) sum_i L_i
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.floating]

__all__ = [
    "Plan",
    "THEORIES",
    "WEIGHTS",
    "ef21_stepsize",
    "ef21w_stepsize",
    "l_am",
    "l_qm",
    "l_weighted",
    "plan",
    "positive_vector",
    "scales",
    "smoothness_weights",
    "stepsize",
    "theta_beta",
    "weights_from",
]

# --------------------------------------------------------------------------- weights


def positive_vector(values: ArrayLike, what: str) -> FloatArray:
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
    v = positive_vector(values, "per-client weight values")
    return v / v.sum()  # w_i = v_i / sum_j v_j


def smoothness_weights(L: ArrayLike) -> FloatArray:
    """EF21-W weights ``w_i = L_i / sum_j L_j`` (ICLR 2024, Algorithm 2)."""
    return weights_from(positive_vector(L, "smoothness constants L_i"))


def scales(weights: ArrayLike) -> FloatArray:
    """The per-client factor ``n w_i`` that client i divides its gradient by (1 for EF21)."""
    w = positive_vector(weights, "weights")
    if not math.isclose(float(w.sum()), 1.0, rel_tol=1e-9):
        raise ValueError(f"weights must sum to 1; got sum {w.sum()!r}")
    return w.size * w  # n w_i


# ------------------------------------------------------------------ smoothness means


def l_am(L: ArrayLike) -> float:
    """Arithmetic mean ``L_AM = (1/n) sum_i L_i`` (ICLR 2024, eq. for L_AM)."""
    return float(np.mean(positive_vector(L, "smoothness constants L_i")))


def l_qm(L: ArrayLike) -> float:
    """Quadratic mean ``L_QM = sqrt((1/n) sum_i L_i^2)`` (EF21's ``L~``, NeurIPS 2021)."""
    v = positive_vector(L, "smoothness constants L_i")
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
    v = positive_vector(L, "smoothness constants L_i")
    w = positive_vector(weights, "weights")
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



# ---------------------------------------------------------------------- the plan


class Plan(NamedTuple):
    """Weights and step of a run, fixed once the server knows what they need."""

    weights: FloatArray
    gamma: float
    L_qm: float | None  # reported when the L_i are known
    L_am: float | None
    L_tilde: float | None  # the constant in the step size (None for an explicit step)


WEIGHTS = ("smoothness", "equal", "data-size")
THEORIES = ("auto", "qm", "am")


def plan(
    weights: str,
    alpha: float,
    L_i: ArrayLike | None = None,
    m_i: ArrayLike | None = None,
    L: float | None = None,
    theory: str = "auto",
    multiplier: float = 1.0,
    step: float | None = None,
) -> Plan:
    """Weights ``w`` and step ``gamma = multiplier / (L + L~ sqrt(beta/theta))``.

    ``weights``: ``smoothness`` (``w_i = L_i / sum L_j``, EF21-W), ``equal`` (EF21) or
    ``data-size`` (``w_i = m_i / sum m_j``). ``theory`` picks ``L~``: ``auto`` =
    :func:`l_weighted` for the weights used (``L_QM`` for EF21, NeurIPS 2021 Thm 1;
    ``L_AM`` for EF21-W, ICLR 2024 Thm 2), or ``qm`` / ``am`` explicitly. ``L`` (the
    smoothness of f) defaults to ``L_AM``. ``step`` overrides the theory.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}; got {weights!r}")
    if theory not in THEORIES:
        raise ValueError(f"theory must be one of {THEORIES}; got {theory!r}")
    Ls = None if L_i is None else positive_vector(L_i, "smoothness constants L_i")
    if weights == "smoothness" or step is None:
        if Ls is None:
            raise ValueError(f"weights={weights!r} with step={step!r} needs the L_i")
    if weights == "equal":
        if Ls is not None:
            n = Ls.size
        elif m_i is not None:  # an explicit step without the L_i: the m_i count the clients
            n = positive_vector(m_i, "data sizes").size
        else:
            raise ValueError("weights='equal' with an explicit step needs the L_i or the m_i (to count the clients)")
        w = np.full(n, 1.0 / n)
    elif weights == "smoothness":
        assert Ls is not None  # checked above
        w = smoothness_weights(Ls)
    else:
        if m_i is None:
            raise ValueError("weights='data-size' needs every client's number of examples m_i")
        w = weights_from(m_i)
    qm = l_qm(Ls) if Ls is not None else None
    am = l_am(Ls) if Ls is not None else None
    if step is not None:
        if not (step > 0 and math.isfinite(step)):
            raise ValueError(f"step must be finite and > 0; got {step!r}")
        return Plan(w, float(step), qm, am, None)
    assert Ls is not None and qm is not None and am is not None  # checked above: no step, so the L_i are given
    L_tilde = {"auto": l_weighted(Ls, w), "qm": qm, "am": am}[theory]
    gamma = multiplier * stepsize(am if L is None else L, L_tilde, alpha)
    return Plan(w, gamma, qm, am, L_tilde)
