"""The papers' logistic regression: gradient vs finite differences, the L_i bound."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.problems.logreg import grad, hessian, lambda_max_gram, loss, power_iteration, smoothness


def _data(seed: int, m: int = 30, d: int = 6, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    A = scale * rng.standard_normal((m, d))
    b = rng.choice([-1.0, 1.0], size=m)
    return A, b, rng


def test_loss_hand_computed_at_zero():
    # x = 0: every margin is 0, log(1 + e^0) = log 2; the regulariser is 0.
    A, b, _ = _data(0)
    assert loss(np.zeros(A.shape[1]), A, b) == pytest.approx(np.log(2.0), rel=1e-15)


def test_regulariser_hand_computed():
    # A row of zeros isolates the regulariser: f(x) = log 2 + lam * sum x^2/(1+x^2).
    A = np.zeros((1, 2))
    b = np.array([1.0])
    x = np.array([1.0, 2.0])  # 1/2 + 4/5 = 1.3
    assert loss(x, A, b, lam=0.1) == pytest.approx(np.log(2.0) + 0.13, rel=1e-14)
    # d/dt t^2/(1+t^2) = 2t/(1+t^2)^2: 2/4 = 0.5 and 4/25 = 0.16
    np.testing.assert_allclose(grad(x, A, b, lam=0.1), [0.05, 0.016], rtol=1e-14)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_gradient_matches_central_differences(seed):
    A, b, rng = _data(seed)
    x = rng.standard_normal(A.shape[1]) * 2
    h = 1e-6
    fd = np.array([(loss(x + h * e, A, b) - loss(x - h * e, A, b)) / (2 * h) for e in np.eye(x.size)])
    np.testing.assert_allclose(grad(x, A, b), fd, rtol=1e-6, atol=1e-8)


def test_hessian_matches_differences_of_gradient():
    A, b, rng = _data(4)
    x = rng.standard_normal(A.shape[1])
    h = 1e-6
    fd = np.stack([(grad(x + h * e, A, b) - grad(x - h * e, A, b)) / (2 * h) for e in np.eye(x.size)])
    np.testing.assert_allclose(hessian(x, A, b), fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("seed", [5, 6])
def test_smoothness_bounds_hessian_everywhere(seed):
    # L_i = lambda_max(A^T A)/(4m) + 2 lam must bound every Hessian eigenvalue, and
    # -lam/2 (the regulariser's most negative curvature) bounds them below.
    A, b, rng = _data(seed, m=40, d=5)
    L = smoothness(A)
    worst = -np.inf
    for _ in range(300):
        x = rng.standard_normal(A.shape[1]) * rng.choice([0.01, 0.3, 1.0, 3.0])
        ev = np.linalg.eigvalsh(hessian(x, A, b))
        assert ev[-1] <= L * (1 + 1e-12)
        assert ev[0] >= -0.1 / 2 - 1e-12
        worst = max(worst, ev[-1])
    # ... and it is not vacuous: near x = 0 with A b-aligned the bound is approached.
    assert worst > 0.5 * L


def test_smoothness_is_tight_for_one_direction():
    # All rows equal to a: lambda_max(A^T A) = m ||a||^2; at x = 0, s(1-s) = 1/4 and the
    # regulariser's curvature is 2 lam: the top Hessian eigenvalue equals L exactly.
    a = np.array([3.0, 4.0])
    A = np.tile(a, (7, 1))
    b = np.ones(7)
    assert smoothness(A, lam=0.1) == pytest.approx(25.0 / 4 + 0.2, rel=1e-12)
    assert np.linalg.eigvalsh(hessian(np.zeros(2), A, b, lam=0.1))[-1] == pytest.approx(25.0 / 4 + 0.2, rel=1e-12)


def test_power_iteration_agrees_with_eigvalsh():
    A, _, rng = _data(7, m=60, d=20)
    exact = float(np.linalg.eigvalsh(A.T @ A)[-1])
    est = power_iteration(A, np.random.default_rng(0), iters=5000, rtol=1e-13)
    assert est <= exact * (1 + 1e-12)
    assert est == pytest.approx(exact, rel=1e-8)
    assert lambda_max_gram(A) == pytest.approx(exact, rel=1e-12)
    assert lambda_max_gram(A, exact_below=1) == pytest.approx(exact, rel=1e-8)  # power path
    wide = rng.standard_normal((4, 30))  # m < d: the small Gram matrix A A^T
    assert lambda_max_gram(wide) == pytest.approx(float(np.linalg.eigvalsh(wide.T @ wide)[-1]), rel=1e-10)


def test_shape_errors_say_what_is_expected():
    A, b, _ = _data(8)
    with pytest.raises(ValueError, match="need A"):
        loss(np.zeros(A.shape[1] + 1), A, b)
