"""MoNNA client maths (hand values from the update equations) and the numpy reference
simulation: f = 0 equals plain averaging; under sign flipping MoNNA learns, averaging
does not (small, seeded)."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.attacks.byzantine import ALIE, SignFlip
from fedsim.robust.monna import (
    MomentumState,
    client_step,
    half_step,
    lr_schedule,
    make_linear_regression,
    momentum_init,
    momentum_update,
    simulate,
)


def test_momentum_ema_hand() -> None:
    s = momentum_update(np.array([3.0, 4.0]), MomentumState(np.array([1.0, 2.0])), beta=0.5)
    np.testing.assert_allclose(s.momentum, [2.0, 3.0])  # 0.5*[1,2] + 0.5*[3,4]
    assert momentum_init(np.ones(3)).momentum.tolist() == [0.0, 0.0, 0.0]


def test_half_step_and_schedule_hand() -> None:
    np.testing.assert_allclose(half_step(np.array([1.0, 1.0]), np.array([2.0, 3.0]), 0.5), [0.0, -0.5])
    assert lr_schedule(0, 0.75, 10) == 0.75
    assert lr_schedule(10, 0.75, 10) == pytest.approx(0.375)  # 0.75 / (10/10 + 1)
    assert lr_schedule(10**6, 0.75) == 0.75


def test_beta0_is_sgd_step() -> None:
    theta, g = np.array([1.0, -2.0]), np.array([0.5, 0.25])
    h, s = client_step(theta, g, momentum_init(theta), beta=0.0, lr=0.1)
    np.testing.assert_allclose(h, theta - 0.1 * g)
    np.testing.assert_allclose(s.momentum, g)


def test_first_momentum_step_is_damped() -> None:
    theta, g = np.zeros(2), np.array([1.0, 2.0])
    h, _ = client_step(theta, g, momentum_init(theta), beta=0.9, lr=1.0)
    np.testing.assert_allclose(h, [-0.1, -0.2])  # m_1 = (1 - beta) g from m_0 = 0


def test_validation_says_why() -> None:
    with pytest.raises(ValueError, match=r"0 <= beta < 1.*beta=1"):
        momentum_update(np.zeros(1), momentum_init(np.zeros(1)), 1.0)
    with pytest.raises(ValueError, match="lr0"):
        lr_schedule(0, 0.0, 10)
    with pytest.raises(ValueError, match="tau"):
        lr_schedule(0, 0.1, -1)
    prob = make_linear_regression(3, 2, 10, heterogeneity=0.0, noise=0.0, offset=1.0,
                                  rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"MoNNA needs 2f < n.*got f=3, n=6"):
        simulate(prob, f=3, steps=1, beta=0.0, lr0=0.1)
    with pytest.raises(ValueError, match="unknown mixer 'krum'"):
        simulate(prob, f=0, steps=1, beta=0.0, lr0=0.1, mixer="krum")


@pytest.fixture(scope="module")
def problem():  # type: ignore[no-untyped-def]
    # 9 honest workers, d=5; w* ~ 3 * ones (far from 0, so -mean is far from the honest)
    return make_linear_regression(9, 5, 50, heterogeneity=0.1, noise=0.1, offset=3.0,
                                  rng=np.random.default_rng(0))


@pytest.mark.parametrize("beta", [0.0, 0.9])
def test_f0_nna_equals_averaging(problem, beta: float) -> None:  # type: ignore[no-untyped-def]
    kw = dict(f=0, steps=50, beta=beta, lr0=0.1, tau=50, seed=3)
    a = simulate(problem, mixer="nna", **kw)  # type: ignore[arg-type]
    b = simulate(problem, mixer="mean", **kw)  # type: ignore[arg-type]
    np.testing.assert_allclose(a.thetas, b.thetas, atol=1e-12)


@pytest.mark.parametrize("rule", ["reference", "byzfl"])
def test_monna_learns_under_sign_flip_averaging_does_not(problem, rule: str) -> None:  # type: ignore[no-untyped-def]
    kw = dict(f=2, steps=300, beta=0.9, lr0=0.1, tau=100, forge=SignFlip().forge, seed=1)
    monna = simulate(problem, mixer="nna", rule=rule, **kw)  # type: ignore[arg-type]
    avg = simulate(problem, mixer="mean", **kw)  # type: ignore[arg-type]
    clean = simulate(problem, f=0, steps=300, beta=0.9, lr0=0.1, tau=100, mixer="mean", seed=1)
    assert clean.excess[-1] < 1e-3  # the problem is solvable at this step size
    assert monna.worst[-1] < 1e-3  # every honest model, not just their mean
    assert avg.excess[-1] > 1.0  # plain averaging is dragged towards 0 every step


def test_monna_holds_under_alie(problem) -> None:  # type: ignore[no-untyped-def]
    res = simulate(problem, f=2, steps=300, beta=0.9, lr0=0.1, tau=100, mixer="nna",
                   rule="byzfl", forge=ALIE(c=1.0).forge, seed=2)
    assert res.worst[-1] < 1e-2


def test_simulation_is_seeded(problem) -> None:  # type: ignore[no-untyped-def]
    kw = dict(f=2, steps=20, beta=0.9, lr0=0.1, forge=SignFlip().forge, seed=7)
    np.testing.assert_array_equal(simulate(problem, **kw).thetas, simulate(problem, **kw).thetas)  # type: ignore[arg-type]
