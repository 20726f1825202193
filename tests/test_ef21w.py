"""EF21 / EF21-W maths (strategies/ef21w.py) and the reference loop (fedsim/ef21/reference.py).

Invariants of EF21 (NeurIPS 2021) and EF21-W (ICLR 2024): identity C => gradient descent; g equals the
weighted sum of the g_i after every round; equal L_i => EF21-W == EF21; Top-k (positively
homogeneous) => EF21-W's iterates equal EF21's at the same step; L_AM <= L_QM.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.ef21.client import client_commit, client_init, client_round
from fedsim.ef21.compressors import Identity, TopK
from fedsim.ef21.reference import logreg_oracles, run_ef21
from fedsim.problems.logreg import grad, smoothness
from fedsim.strategies.ef21w import (
    client_step,
    ef21_stepsize,
    ef21w_stepsize,
    l_am,
    l_qm,
    l_weighted,
    scales,
    server_aggregate,
    server_step,
    smoothness_weights,
    stepsize,
    theta_beta,
    weighted_sum,
    weights_from,
)

SQRT3 = math.sqrt(3.0)


def _parts(seed=0, n=4, m=25, d=8, client_scale=(1.0, 1.0, 1.0, 6.0)):
    """n clients of logistic regression; scaling client i's features spreads the L_i."""
    rng = np.random.default_rng(seed)
    parts = []
    for i in range(n):
        A = client_scale[i] * rng.standard_normal((m, d)) / math.sqrt(d)
        b = np.sign(A @ rng.standard_normal(d) + 0.3 * rng.standard_normal(m))
        parts.append((A, b))
    return parts


def _full_grad(parts):
    return lambda x: np.mean([grad(x, A, b) for A, b in parts], axis=0)


# ------------------------------------------------------------------ hand-computed values


def test_theta_beta_hand_computed():
    assert theta_beta(1.0) == (1.0, 0.0)  # no compression
    assert theta_beta(0.75) == pytest.approx((0.5, 0.5))  # sqrt(1/4) = 1/2; (1/4)/(1/2)
    theta, beta = theta_beta(0.25)  # sqrt(3/4) = sqrt(3)/2
    assert theta == pytest.approx(1 - SQRT3 / 2, rel=1e-14)
    assert beta == pytest.approx(3 + 1.5 * SQRT3, rel=1e-14)  # 0.75 / (1 - sqrt3/2)
    assert math.sqrt(beta / theta) == pytest.approx(3 + 2 * SQRT3, rel=1e-14)


def test_stepsizes_for_n4_one_outlier():
    # n = 4, L = (1, 1, 1, 100); Top-1 of d = 4 (alpha = 1/4).
    L = [1.0, 1.0, 1.0, 100.0]
    assert l_am(L) == 25.75  # 103 / 4
    assert l_qm(L) == pytest.approx(math.sqrt(10003 / 4), rel=1e-15)  # sqrt(2500.75) = 50.0075
    sq = 3 + 2 * SQRT3  # sqrt(beta/theta) at alpha = 1/4
    g_ef21 = 1 / (25.75 + math.sqrt(2500.75) * sq)  # L defaults to L_AM
    g_w = 1 / (25.75 * (1 + sq))
    assert ef21_stepsize(L, alpha=0.25) == pytest.approx(g_ef21, rel=1e-14)
    assert ef21w_stepsize(L, alpha=0.25) == pytest.approx(g_w, rel=1e-14)
    assert g_ef21 == pytest.approx(1 / 349.0036, rel=1e-5)
    assert g_w == pytest.approx(1 / 192.2006, rel=1e-5)
    # The bound's iteration count scales with 1/gamma: EF21-W needs ~1.82x fewer here
    # (not ~10x: L_QM/L_AM ~ sqrt(n) for one outlier, about 1.94 at n = 4).
    assert g_w / g_ef21 == pytest.approx(1.8159, abs=1e-4)
    # An explicit L (smoothness of f) replaces the default L_AM.
    assert ef21w_stepsize(L, alpha=1.0, L=10.0) == pytest.approx(1 / 10.0)
    np.testing.assert_allclose(smoothness_weights(L), np.array(L) / 103)
    np.testing.assert_allclose(scales(smoothness_weights(L)), 4 * np.array(L) / 103)


def test_weights_hand_computed_and_data_size_option():
    np.testing.assert_allclose(weights_from([2, 6]), [0.25, 0.75])  # data sizes m = (2, 6)
    np.testing.assert_allclose(scales([0.25, 0.75]), [0.5, 1.5])
    # l_weighted: w = 1/n gives L_QM, w proportional to L gives L_AM.
    L = [1.0, 2.0, 7.0]
    assert l_weighted(L, [1 / 3] * 3) == pytest.approx(l_qm(L), rel=1e-14)
    assert l_weighted(L, smoothness_weights(L)) == pytest.approx(l_am(L), rel=1e-14)


def test_server_and_client_updates_hand_computed():
    w = np.array([0.25, 0.75])
    g = weighted_sum(w, [np.array([4.0, 0.0]), np.array([0.0, 4.0])])
    np.testing.assert_allclose(g, [1.0, 3.0])
    np.testing.assert_allclose(server_step(np.array([1.0, 1.0]), g, 0.5), [0.5, -0.5])
    # client 1 (n w = 1.5): c = Top1(grad/1.5 - g_1) = Top1([3, 0] - [0, 4]) = [0, -4]
    c, g1 = client_step(np.array([4.5, 0.0]), np.array([0.0, 4.0]), 1.5, TopK(1, 2).compress)
    np.testing.assert_allclose(c, [0.0, -4.0])
    np.testing.assert_allclose(g1, [0.0, 0.0])
    # absent client 0 keeps its contribution; g = [1, 3] + 0.75 * [0, -4]
    np.testing.assert_allclose(server_aggregate(g, w, {1: c}), [1.0, 0.0])


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5, float("nan")])
def test_theta_beta_refuses_non_contractive_alpha(alpha):
    with pytest.raises(ValueError, match="alpha in"):
        theta_beta(alpha)


def test_weights_refuse_non_positive_and_bad_sums():
    with pytest.raises(ValueError, match="> 0"):
        smoothness_weights([1.0, 0.0])
    with pytest.raises(ValueError, match="sum to 1"):
        scales([0.5, 0.6])
    with pytest.raises(ValueError, match="one weight per"):
        l_weighted([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="L > 0"):
        stepsize(0.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="scale"):
        client_step(np.ones(2), np.zeros(2), 0.0, Identity().compress)
    with pytest.raises(ValueError, match="only 2 weights"):
        server_aggregate(np.zeros(2), [0.5, 0.5], {2: np.ones(2)})


# ------------------------------------------------------------------ properties


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=1e-3, max_value=1e4), min_size=1, max_size=30))
def test_l_am_never_exceeds_l_qm(L):
    assert l_am(L) <= l_qm(L) * (1 + 1e-12)
    # so the EF21-W step is never smaller than EF21's
    assert ef21w_stepsize(L, 0.1) >= ef21_stepsize(L, 0.1) * (1 - 1e-12)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(min_value=1e-2, max_value=1e3), min_size=2, max_size=10),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_smoothness_weights_minimise_l_weighted(L, seed):
    w = np.random.default_rng(seed).dirichlet(np.ones(len(L)))
    w = np.maximum(w, 1e-6)
    w /= w.sum()
    assert l_weighted(L, w) >= l_am(L) * (1 - 1e-12)  # Cauchy-Schwarz


# ------------------------------------------------------------------ differential tests


@pytest.mark.parametrize("weighted", [False, True])
def test_identity_compressor_is_gradient_descent(weighted):
    parts = _parts(1)
    L = [smoothness(A) for A, _ in parts]
    w = smoothness_weights(L) if weighted else None
    gamma = 1 / l_am(L)
    x0 = np.random.default_rng(2).standard_normal(parts[0][0].shape[1])
    seen = []
    trace = run_ef21(logreg_oracles(parts), x0, gamma, rounds=60, weights=w,
                     callback=lambda t, x, g, gi: seen.append(x.copy()))
    # the plain reference: x^{t+1} = x^t - gamma grad f(x^t)
    fg = _full_grad(parts)
    x, gd = x0.copy(), []
    for _ in range(60):
        x = x - gamma * fg(x)
        gd.append(x.copy())
    np.testing.assert_allclose(np.array(seen), np.array(gd), rtol=1e-6, atol=1e-9)
    gd_norms = [float(fg(x0) @ fg(x0))] + [float(fg(y) @ fg(y)) for y in gd]
    np.testing.assert_allclose(trace.grad_norm_sq, gd_norms, rtol=1e-6)
    assert trace.grad_norm_sq[-1] < 0.5 * trace.grad_norm_sq[0]


@pytest.mark.parametrize("weighted,participation", [(False, None), (True, None), (True, [0.9, 0.5, 0.3, 0.7])])
def test_server_g_equals_weighted_sum_of_client_g_every_round(weighted, participation):
    parts = _parts(3)
    L = [smoothness(A) for A, _ in parts]
    w = smoothness_weights(L) if weighted else np.full(4, 0.25)
    errs = []

    def check(t, x, g, g_i):
        errs.append(np.linalg.norm(g - sum(wi * gi for wi, gi in zip(w, g_i))) / max(1, np.linalg.norm(g)))

    trace = run_ef21(logreg_oracles(parts), np.zeros(8), ef21w_stepsize(L, 2 / 8), rounds=80,
                     compressor=TopK(2, 8), weights=w, participation=participation,
                     full_grad=_full_grad(parts), rng=np.random.default_rng(4), callback=check)
    assert len(errs) == 80
    assert max(errs) < 1e-12
    assert trace.g_err < 1e-12


def test_equal_smoothness_makes_ef21w_equal_ef21():
    parts = _parts(5, client_scale=(1.0,) * 4)
    L = [3.7] * 4  # equal L_i => w_i = 1/n
    kw = dict(x0=np.ones(8), gamma=0.05, rounds=50, compressor=TopK(1, 8))
    a = run_ef21(logreg_oracles(parts), **kw)
    b = run_ef21(logreg_oracles(parts), weights=smoothness_weights(L), **kw)
    np.testing.assert_allclose(b.x, a.x, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(b.grad_norm_sq, a.grad_norm_sq, rtol=1e-10)


def test_topk_ef21w_iterates_equal_ef21_at_same_step():
    # Positive homogeneity: n w_i c_i^W = TopK(grad_i - n w_i g_i^W), so n w_i g_i^W
    # follows EF21's g_i and the server's g is the same vector.
    parts = _parts(6, client_scale=(0.5, 1.0, 2.0, 8.0))
    L = [smoothness(A) for A, _ in parts]
    assert l_qm(L) / l_am(L) > 1.3  # genuinely heterogeneous
    gamma = ef21w_stepsize(L, 1 / 8)
    xs = {}
    for name, w in (("ef21", None), ("ef21w", smoothness_weights(L))):
        xs[name] = []
        run_ef21(logreg_oracles(parts), np.ones(8), gamma, rounds=100, compressor=TopK(1, 8),
                 weights=w, callback=lambda t, x, g, gi, out=xs[name]: out.append(x.copy()))
    np.testing.assert_allclose(np.array(xs["ef21w"]), np.array(xs["ef21"]), rtol=1e-9, atol=1e-12)


def test_theory_steps_converge_and_ef21w_step_is_larger():
    parts = _parts(7, client_scale=(0.5, 1.0, 2.0, 8.0))
    L = [smoothness(A) for A, _ in parts]
    C = TopK(2, 8)
    g_qm, g_am = ef21_stepsize(L, C.alpha), ef21w_stepsize(L, C.alpha)
    assert g_am > g_qm
    runs = {g: run_ef21(logreg_oracles(parts), np.ones(8), g, rounds=400, compressor=C,
                        weights=smoothness_weights(L)) for g in (g_qm, g_am)}
    for tr in runs.values():
        assert tr.grad_norm_sq[-1] < 1e-2 * tr.grad_norm_sq[0]
    assert runs[g_am].grad_norm_sq[-1] < runs[g_qm].grad_norm_sq[-1]


def test_sgd_and_pp_variants_decrease_gradient_norm():
    parts = _parts(8)
    L = [smoothness(A) for A, _ in parts]
    fg = _full_grad(parts)
    sgd = run_ef21(logreg_oracles(parts, batch_size=10), np.ones(8), ef21w_stepsize(L, 0.25), rounds=300,
                   compressor=TopK(2, 8), weights=smoothness_weights(L), full_grad=fg,
                   rng=np.random.default_rng(9))
    pp = run_ef21(logreg_oracles(parts), np.ones(8), ef21w_stepsize(L, 0.25) / 2, rounds=300,
                  compressor=TopK(2, 8), weights=smoothness_weights(L), participation=[0.5] * 4,
                  full_grad=fg, rng=np.random.default_rng(9))
    for tr in (sgd, pp):
        assert np.mean(tr.grad_norm_sq[-20:]) < 0.1 * tr.grad_norm_sq[0]
    # PP: only participants pay: about half of full participation's bits
    full_bits = 8 * 32 + 300 * TopK(2, 8).bits(8)
    assert 0.35 * full_bits < pp.bits[-1] < 0.65 * full_bits


def test_bits_accounting():
    parts = _parts(9)
    C = TopK(1, 8)
    tr = run_ef21(logreg_oracles(parts), np.ones(8), 0.01, rounds=5, compressor=C)
    # x^0: nothing sent; x^1: one uncompressed message (32 d); then one Top-1 message
    # (32 + 3 index bits) per client per round.
    np.testing.assert_allclose(tr.bits, [0, 256, 291, 326, 361, 396])


def test_tolerance_stops_early_and_rounds_to():
    parts = _parts(10)
    tr = run_ef21(logreg_oracles(parts), np.ones(8), 0.5, rounds=10_000, tol=1e-6)
    t = tr.rounds_to(1e-6)
    assert t is not None and t == tr.rounds < 10_000


# ------------------------------------------------------------------ client state protocol


def test_client_round_first_message_is_dense_then_compressed():
    # The client keeps h_i = n w_i g_i; dense = the identity as C; scale s_i = n w_i = 2.
    st0 = client_init(4)
    c, st1 = client_round(st0, np.array([4.0, -2.0, 1.0, 0.5]), 2.0, Identity().compress, rnd=0, acked_round=-1)
    np.testing.assert_allclose(c, [2.0, -1.0, 0.5, 0.25])  # grad / (n w_i), uncompressed
    c, st2 = client_round(st1, np.array([4.0, 0.0, 1.0, 0.5]), 2.0, TopK(1, 4).compress, rnd=1, acked_round=0)
    np.testing.assert_allclose(st2.h / 2.0, [2.0, -1.0, 0.5, 0.25])  # round 0 committed: g_i = h_i / s_i
    np.testing.assert_allclose(c, [0.0, 1.0, 0.0, 0.0])  # Top1([2,0,.5,.25] - g_i)
    np.testing.assert_allclose(st2.pending, 2.0 * c)  # s_i c_i, committed when acknowledged


def test_lost_reply_is_not_committed_and_invariant_survives_dropouts():
    # Replies are dropped at random on their way to the server; the server acks only
    # what it added. g must equal sum_i w_i g_i(committed) after every round.
    parts = _parts(11)
    L = [smoothness(A) for A, _ in parts]
    w = smoothness_weights(L)
    s = scales(w)
    rng = np.random.default_rng(12)
    C = TopK(2, 8)
    states = [client_init(8) for _ in parts]
    acked = [-1] * 4
    g, x = np.zeros(8), np.ones(8)
    gamma = ef21w_stepsize(L, C.alpha)
    fg = _full_grad(parts)
    start = float(fg(x) @ fg(x))
    for rnd in range(200):
        received = {}
        for i, (A, b) in enumerate(parts):
            compress = Identity().compress if acked[i] < 0 else C.compress  # dense until the server has one
            c, states[i] = client_round(states[i], grad(x, A, b), s[i], compress, rnd, acked[i])
            if rng.random() < 0.7:  # the reply arrives
                received[i] = c
                acked[i] = rnd
        g = server_aggregate(g, w, received)
        committed = [client_commit(st_, a).h / s[i] for i, (st_, a) in enumerate(zip(states, acked))]  # g_i
        np.testing.assert_allclose(g, sum(wi * gi for wi, gi in zip(w, committed)), rtol=1e-12, atol=1e-14)
        x = server_step(x, g, gamma)
    assert float(fg(x) @ fg(x)) < 1e-2 * start


def test_lost_message_is_dropped_on_both_sides():
    st0 = client_init(2)
    _, st1 = client_round(st0, np.array([1.0, 2.0]), 1.0, Identity().compress, rnd=0, acked_round=-1)
    _, st2 = client_round(st1, np.array([1.0, 2.0]), 1.0, Identity().compress, rnd=1, acked_round=-1)
    np.testing.assert_array_equal(st2.h, [0.0, 0.0])  # round 0 never reached the server
    assert st2.pending_round == 1
    np.testing.assert_array_equal(client_commit(st2, acked_round=1).h, [1.0, 2.0])

