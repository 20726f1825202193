"""NNA and the server's all-clients mixing step (fedsim.robust.nna).

Hand values on 1-D toy vectors, the invariants of NNA (MoNNA, Farhadkhani et al., ICML 2023)
as hypothesis properties, and validation errors.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedsim.robust.nna import (
    kept_count,
    nna,
    nna_aggregator,
    nna_mix,
    pairwise_sq_distances,
    received_count,
    received_sets,
)

# 1-D toy round: three honest clients near 0, two vectors near 10.
X = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])


def col(*v: float) -> np.ndarray:
    return np.array(v, dtype=np.float64)[:, None]


# --- hand-computed values -------------------------------------------------------------


def test_counts_per_rule() -> None:
    assert (received_count(26, 5, "reference"), kept_count(26, 5, "reference")) == (21, 16)
    assert (received_count(26, 5, "byzfl"), kept_count(26, 5, "byzfl")) == (26, 21)


def test_nna_byzfl_hand() -> None:
    # pivot 0 holds all five; keeps the n-f=4 nearest {0,1,2,10}: 13/4
    assert nna(np.array([0.0]), X, f=1, rule="byzfl") == pytest.approx([3.25])


def test_nna_reference_hand() -> None:
    # pivot 0 received n-f=4 vectors {0,1,10,11}; keeps the n-2f=3 nearest {0,1,10}: 11/3
    assert nna(np.array([0.0]), col(0, 1, 10, 11), f=1, rule="reference") == pytest.approx([11 / 3])


def test_mix_byzfl_hand() -> None:
    out = nna_mix(X, 1, rule="byzfl", byzantine=[4])
    # pivots 0,1,2 -> {0,1,2,10}; pivot 3 (value 10) -> {10,11,2,1} = 24/4
    np.testing.assert_allclose(out[:, 0], [3.25, 3.25, 3.25, 6.0])


def test_mix_reference_explicit_received_hand() -> None:
    received = np.array([
        [1, 1, 0, 1, 1],  # pivot 0 heard {0,1,10,11}: keeps {0,1,10} -> 11/3
        [0, 1, 1, 0, 1],  # not n-f=4 per row: invalid, replaced below
    ], dtype=bool)
    received[1] = [1, 1, 1, 0, 1]  # pivot 2 heard {0,1,2,11}: keeps {2,1,0} -> 1
    out = nna_mix(X, 1, rule="reference", pivots=[0, 2], received=received)
    np.testing.assert_allclose(out[:, 0], [11 / 3, 1.0])


def test_pairwise_distances_hand_and_huge_row() -> None:
    d = pairwise_sq_distances(np.array([[0.0, 0.0], [3.0, 4.0], [1e12, -1e12]]))
    assert d[0, 1] == pytest.approx(25.0, rel=1e-12)  # exact despite the 1e12 row
    assert np.all(np.diag(d) == 0) and np.allclose(d, d.T)


def test_received_sets_always_hold_own_and_byzantine() -> None:
    rng = np.random.default_rng(0)
    mask = received_sets(11, 3, [0, 1, 2, 3], byzantine=[8, 9, 10], rng=rng)
    assert mask.shape == (4, 11) and np.all(mask.sum(axis=1) == 8)  # n - f
    assert np.all(mask[np.arange(4), [0, 1, 2, 3]]) and np.all(mask[:, 8:])


def test_float32_stays_float32() -> None:
    out = nna_mix(X.astype(np.float32), 1, rule="byzfl")
    assert out.dtype == np.float32


# --- invariants (MoNNA, ICML 2023) -----------------------------------------------------

sizes = st.tuples(st.integers(1, 9), st.integers(0, 4), st.integers(1, 6)).filter(
    lambda t: 2 * t[1] < t[0]
)


@settings(max_examples=40, deadline=None)
@given(nfd=sizes, seed=st.integers(0, 2**32 - 1), rule=st.sampled_from(["reference", "byzfl"]))
def test_f0_is_plain_average(nfd: tuple[int, int, int], seed: int, rule: str) -> None:
    n, _, d = nfd
    x = np.random.default_rng(seed).normal(size=(n, d))
    out = nna_mix(x, 0, rule=rule)  # type: ignore[arg-type]
    np.testing.assert_allclose(out, np.repeat(x.mean(axis=0, keepdims=True), n, axis=0), atol=1e-12)
    np.testing.assert_allclose(nna(x[0], x, 0, rule=rule), x.mean(axis=0), atol=1e-12)  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(nfd=sizes, seed=st.integers(0, 2**32 - 1), data=st.data())
def test_invariant_to_order_of_others(nfd: tuple[int, int, int], seed: int, data: st.DataObject) -> None:
    n, f, d = nfd
    x = np.random.default_rng(seed).normal(size=(n, d))  # continuous: no distance ties
    perm = np.array(data.draw(st.permutations(range(n))))
    for rule in ("reference", "byzfl"):
        m = n - f if rule == "reference" else n
        held = perm[:m]  # the same held set, in two orders
        np.testing.assert_allclose(nna(x[held[0]], x[held], f, rule),  # type: ignore[arg-type]
                                   nna(x[held[0]], x[np.sort(held)], f, rule), atol=1e-12)  # type: ignore[arg-type]
    # all-clients mixing is equivariant: permuting rows permutes the outputs
    inv = np.argsort(perm)
    np.testing.assert_allclose(nna_mix(x[perm], f, rule="byzfl")[inv], nna_mix(x, f, rule="byzfl"),
                               atol=1e-12)
    # reference rule with the received sets relabelled in the same way
    mask = received_sets(n, f, list(range(n)), rng=np.random.default_rng(seed))
    out = nna_mix(x, f, rule="reference", pivots=range(n), received=mask)
    out_p = nna_mix(x[perm], f, rule="reference", pivots=inv, received=mask[:, perm])
    np.testing.assert_allclose(out_p, out, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(nfd=sizes.filter(lambda t: t[1] >= 1), seed=st.integers(0, 2**32 - 1))
def test_far_byzantine_leave_the_honest_mean(nfd: tuple[int, int, int], seed: int) -> None:
    n, f, d = nfd
    rng = np.random.default_rng(seed)
    honest = rng.normal(size=(n - f, d))
    far = honest.mean(axis=0) + 1e3 * rng.normal(size=(f, d)) + 1e3  # farther than every honest
    x = np.vstack([honest, far])
    byz = list(range(n - f, n))
    out = nna_mix(x, f, rule="byzfl", byzantine=byz)
    np.testing.assert_allclose(out, np.repeat(honest.mean(axis=0, keepdims=True), n - f, 0), atol=1e-9)
    # reference: each pivot gets the mean of the honest vectors it received
    mask = received_sets(n, f, list(range(n - f)), byzantine=byz, rng=rng)
    out = nna_mix(x, f, rule="reference", byzantine=byz, received=mask)
    expect = (mask[:, : n - f] @ honest) / mask[:, : n - f].sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out, expect, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    nfd=sizes.filter(lambda t: t[1] >= 1),
    v=st.floats(-1e3, 1e3),
    data=st.data(),
    rule=st.sampled_from(["reference", "byzfl"]),
)
def test_identical_honest_come_back_unchanged(
    nfd: tuple[int, int, int], v: float, data: st.DataObject, rule: str
) -> None:
    n, f, d = nfd
    byz = data.draw(hnp.arrays(np.float64, (f, d), elements=st.floats(-1e6, 1e6)))
    x = np.vstack([np.full((n - f, d), v), byz])
    out = nna_mix(x, f, rule=rule, byzantine=range(n - f, n), rng=np.random.default_rng(0))  # type: ignore[arg-type]
    np.testing.assert_allclose(out, np.full((n - f, d), v), rtol=1e-12, atol=1e-12)


# --- validation -----------------------------------------------------------------------


def test_needs_honest_majority() -> None:
    with pytest.raises(ValueError, match=r"needs 2f < n.*got f=2, n=4"):
        nna_mix(np.zeros((4, 2)), 2)
    with pytest.raises(ValueError, match=r"got f=2, n=4"):  # reference: n = m + f = 2 + 2
        nna(np.zeros(2), np.zeros((2, 2)), 2, rule="reference")
    with pytest.raises(ValueError, match="f >= 0"):
        nna_mix(np.zeros((4, 2)), -1)


def test_bad_inputs_say_why() -> None:
    with pytest.raises(ValueError, match="unknown NNA rule 'median'; known: reference, byzfl"):
        nna_mix(X, 1, rule="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN or inf"):
        nna_mix(np.array([[0.0], [np.nan], [1.0]]), 0)
    with pytest.raises(ValueError, match=r"\(n, d\) array"):
        nna_mix(np.zeros(5), 0)
    with pytest.raises(ValueError, match="pass rng="):
        nna_mix(np.zeros((7, 2)), 1, rule="reference")  # 5 others to pick from 6: a draw
    with pytest.raises(ValueError, match="n-f=4 per row"):
        nna_mix(X, 1, rule="reference", pivots=[0], received=np.ones((1, 5), dtype=bool))
    with pytest.raises(ValueError, match="both a pivot and Byzantine"):
        nna_mix(X, 1, rule="reference", pivots=[4], byzantine=[4], rng=np.random.default_rng(0))


def test_no_rng_needed_when_no_choice() -> None:
    # n=5, f=2, two Byzantine rows: each worker waits for n-f-1=2 others = the 2 Byzantine
    out = nna_mix(X, 2, rule="reference", byzantine=[3, 4])
    np.testing.assert_allclose(out[:, 0], [0.0, 1.0, 2.0])  # keeps n-2f=1: its own vector


def test_nna_aggregator_mixes_honest_rows() -> None:
    agg = nna_aggregator("byzfl")
    np.testing.assert_allclose(agg(X, 1)[:, 0], [3.25, 3.25, 3.25, 6.0])


@settings(max_examples=30, deadline=None)
@given(nfd=sizes, seed=st.integers(0, 2**32 - 1), rule=st.sampled_from(["reference", "byzfl"]))
def test_vectorised_mix_equals_one_nna_per_client(nfd: tuple[int, int, int], seed: int, rule: str) -> None:
    """Differential: the all-clients step against the single-pivot operator, row by row."""
    n, f, d = nfd
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    byz = list(range(n - f, n))
    mask = received_sets(n, f, list(range(n - f)), byzantine=byz, rng=rng)
    out = nna_mix(x, f, rule=rule, byzantine=byz, received=mask if rule == "reference" else None)  # type: ignore[arg-type]
    for i in range(n - f):
        held = x[mask[i]] if rule == "reference" else x
        np.testing.assert_allclose(out[i], nna(x[i], held, f, rule), atol=1e-12)  # type: ignore[arg-type]


def test_distances_accurate_for_models_far_from_origin() -> None:
    """Half-step models near convergence: norms ~1e4, differences ~1e-4, plus a huge
    Byzantine row first (so no centring on row 0 could rescue it)."""
    rng = np.random.default_rng(0)
    honest = 1e4 + 1e-4 * rng.normal(size=(6, 1000))
    x = np.vstack([np.full((1, 1000), 1e12), honest])
    exact = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_allclose(pairwise_sq_distances(x)[1:, 1:], exact[1:, 1:], rtol=1e-6)
