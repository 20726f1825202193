"""Logistic regression with a non-convex regulariser: the EF21 papers' test problem.

Richtarik, Sokolov, Fatkhullin, "EF21", NeurIPS 2021 (Section 5 / Appendix), and
Richtarik, Gasanov, Burlachenko, "Error Feedback Reloaded", ICLR 2024 (Section 4)::

    f_i(x) = (1/m_i) sum_j log(1 + exp(-b_ij a_ij^T x)) + lam * sum_k x_k^2 / (1 + x_k^2)

with labels ``b_ij`` in {-1, +1} and ``lam = 0.1``.

Smoothness. The logistic part has Hessian ``(1/m) A^T D A`` with ``D = diag(s(1-s))``,
``s(1-s) <= 1/4``; the regulariser ``r(t) = t^2/(1+t^2)`` has
``r''(t) = (2 - 6t^2)/(1+t^2)^3`` in ``[-1/2, 2]`` (max at t = 0, min at t^2 = 1). So

    L_i = lambda_max(A_i^T A_i) / (4 m_i) + 2 lam

bounds ``||Hess f_i(x)||`` everywhere (the Hessian's eigenvalues lie in
``[-lam/2, L_i]``), the constant both papers use. Pure numpy.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "LAMBDA",
    "grad",
    "hessian",
    "lambda_max_gram",
    "loss",
    "power_iteration",
    "smoothness",
]

LAMBDA = 0.1  # the papers' regularisation weight


def _check(x: np.ndarray, A: np.ndarray, b: np.ndarray) -> None:
    if A.ndim != 2 or b.shape != (A.shape[0],) or x.shape != (A.shape[1],):
        raise ValueError(f"need A (m, d), b (m,), x (d,); got A {A.shape}, b {b.shape}, x {x.shape}")


def loss(x: np.ndarray, A: np.ndarray, b: np.ndarray, lam: float = LAMBDA) -> float:
    """``f_i(x) = mean_j log(1 + exp(-b_j a_j^T x)) + lam sum_k x_k^2/(1+x_k^2)``."""
    _check(x, A, b)
    t = b * (A @ x)
    # log(1 + exp(-t)) computed as logaddexp(0, -t): no overflow for large |t|
    return float(np.mean(np.logaddexp(0.0, -t)) + lam * np.sum(x * x / (1.0 + x * x)))


def grad(x: np.ndarray, A: np.ndarray, b: np.ndarray, lam: float = LAMBDA) -> np.ndarray:
    """``grad f_i(x) = -(1/m) A^T (b * sigma(-b Ax)) + lam * 2x / (1+x^2)^2``."""
    _check(x, A, b)
    t = b * (A @ x)
    s = np.exp(-np.logaddexp(0.0, t))  # sigma(-t) = 1/(1+e^t), stable
    return -(A.T @ (b * s)) / A.shape[0] + lam * 2.0 * x / (1.0 + x * x) ** 2


def hessian(x: np.ndarray, A: np.ndarray, b: np.ndarray, lam: float = LAMBDA) -> np.ndarray:
    """``(1/m) A^T diag(s(1-s)) A + lam diag((2 - 6x^2)/(1+x^2)^3)``, ``s = sigma(b a^T x)``."""
    _check(x, A, b)
    t = b * (A @ x)
    s = np.exp(-np.logaddexp(0.0, -t))  # sigma(t)
    H = (A.T * (s * (1.0 - s))) @ A / A.shape[0]
    H[np.diag_indices_from(H)] += lam * (2.0 - 6.0 * x * x) / (1.0 + x * x) ** 3
    return H


def power_iteration(
    A: np.ndarray, rng: np.random.Generator, iters: int = 1000, rtol: float = 1e-10
) -> float:
    """Largest eigenvalue of ``A^T A`` by power iteration on ``v -> A^T (A v)``.

    The Rayleigh quotient never exceeds the true value (a lower estimate); it stops
    when it changes by less than ``rtol`` relatively. Costs two mat-vecs an iteration.
    """
    if A.ndim != 2 or A.size == 0:
        raise ValueError(f"need a non-empty 2-D matrix; got shape {A.shape}")
    v = rng.standard_normal(A.shape[1:])  # shape (d,)
    v /= np.linalg.norm(v)
    est = 0.0
    for _ in range(iters):
        w = A.T @ (A @ v)  # w = A^T A v
        new = float(v @ w)  # Rayleigh quotient v^T A^T A v, ||v|| = 1
        nw = np.linalg.norm(w)
        if nw == 0.0:
            return 0.0
        v = w / nw
        if abs(new - est) <= rtol * max(new, 1e-300):
            return new
        est = new
    return est


def lambda_max_gram(A: np.ndarray, rng: np.random.Generator | None = None, exact_below: int = 2048) -> float:
    """``lambda_max(A^T A)``: exact (eigvalsh of the smaller Gram matrix) when
    ``min(m, d) <= exact_below``, else :func:`power_iteration`."""
    m, d = A.shape
    if min(m, d) <= exact_below:
        G = A @ A.T if m < d else A.T @ A  # same nonzero spectrum
        return float(np.linalg.eigvalsh(G)[-1])
    return power_iteration(A, rng if rng is not None else np.random.default_rng(0))


def smoothness(A: np.ndarray, lam: float = LAMBDA, rng: np.random.Generator | None = None) -> float:
    """``L_i = lambda_max(A_i^T A_i) / (4 m_i) + 2 lam`` (EF21 NeurIPS 2021; ICLR 2024)."""
    return lambda_max_gram(A, rng) / (4.0 * A.shape[0]) + 2.0 * lam  # L_i formula
