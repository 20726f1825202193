"""Robust aggregators and NNM pre-aggregation (fedsim.robust.aggregators): hand values,
invariants, validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.robust.aggregators import (
    coordinate_median,
    get_aggregator,
    krum,
    krum_scores,
    mean,
    multi_krum,
    nnm,
    trimmed_mean,
    with_nnm,
)

X = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])


def test_nnm_hand() -> None:
    # rows 0,1,2 -> mean{0,1,2,10} = 3.25; rows 10, 11 -> mean{10,11,2,1} = 6
    np.testing.assert_allclose(nnm(X, 1)[:, 0], [3.25, 3.25, 3.25, 6.0, 6.0])


def test_trimmed_mean_hand() -> None:
    assert trimmed_mean(X, 1) == pytest.approx([13 / 3])  # drop 0 and 11
    x = np.array([[0.0, 5.0], [1.0, 4.0], [2.0, 3.0], [100.0, -100.0]])
    np.testing.assert_allclose(trimmed_mean(x, 1), [1.5, 3.5])  # per coordinate


def test_nnm_then_trimmed_mean_hand() -> None:
    # NNM gives [3.25, 3.25, 3.25, 6, 6]; trimming one each end leaves {3.25, 3.25, 6}
    assert with_nnm(trimmed_mean)(X, 1) == pytest.approx([12.5 / 3])
    assert get_aggregator("nnm+trimmed_mean")(X, 1) == pytest.approx([12.5 / 3])


def test_median_hand() -> None:
    x = np.array([[0.0, 5.0], [1.0, 4.0], [2.0, 3.0], [100.0, -100.0], [3.0, 2.0]])
    np.testing.assert_allclose(coordinate_median(x, 2), [2.0, 3.0])


def test_krum_hand() -> None:
    # n - f - 2 = 2 nearest squared distances: row0 1+4, row1 1+1, row2 1+4, row3 1+64, row4 1+81
    np.testing.assert_allclose(krum_scores(X, 1), [5.0, 2.0, 5.0, 65.0, 82.0])
    assert krum(X, 1) == pytest.approx([1.0])
    assert multi_krum(X, 1, m=3) == pytest.approx([1.0])  # rows 1, 0, 2
    assert multi_krum(X, 1, m=4) == pytest.approx([13 / 4])


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 9), d=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_f0_plain_average(n: int, d: int, seed: int) -> None:
    x = np.random.default_rng(seed).normal(size=(n, d))
    for agg in (trimmed_mean, with_nnm(mean), with_nnm(trimmed_mean)):
        np.testing.assert_allclose(agg(x, 0), x.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(nnm(x, 0), np.repeat(x.mean(axis=0, keepdims=True), n, 0), atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(3, 9), d=st.integers(1, 5), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_order_invariance(n: int, d: int, seed: int, data: st.DataObject) -> None:
    f = (n - 1) // 2
    x = np.random.default_rng(seed).normal(size=(n, d))
    perm = np.array(data.draw(st.permutations(range(n))))
    for name in ("trimmed_mean", "median", "nnm+trimmed_mean", "nnm+median", "nnm+mean"):
        agg = get_aggregator(name)
        np.testing.assert_allclose(agg(x[perm], f), agg(x, f), atol=1e-12, err_msg=name)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(3, 9), d=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_far_byzantine_leave_honest_mean_after_nnm(n: int, d: int, seed: int) -> None:
    f = (n - 1) // 2
    rng = np.random.default_rng(seed)
    honest = rng.normal(size=(n - f, d))
    x = np.vstack([honest, 1e4 + rng.normal(size=(f, d))])
    np.testing.assert_allclose(nnm(x, f)[: n - f], np.repeat(honest.mean(0, keepdims=True), n - f, 0),
                               atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(3, 9), v=st.floats(-1e3, 1e3), seed=st.integers(0, 2**32 - 1))
def test_identical_honest_unchanged(n: int, v: float, seed: int) -> None:
    f = (n - 1) // 2
    x = np.vstack([np.full((n - f, 2), v), np.random.default_rng(seed).normal(scale=1e3, size=(f, 2))])
    for name in ("trimmed_mean", "median", "nnm+trimmed_mean", "nnm+median"):
        np.testing.assert_allclose(get_aggregator(name)(x, f), [v, v], rtol=1e-12, atol=1e-12)


def test_validation_says_why() -> None:
    with pytest.raises(ValueError, match=r"trimmed mean needs 2f < n.*got f=2, n=4"):
        trimmed_mean(np.zeros((4, 1)), 2)
    with pytest.raises(ValueError, match=r"NNM needs 2f < n"):
        nnm(np.zeros((4, 1)), 2)
    with pytest.raises(ValueError, match=r"Krum needs 2f \+ 2 < n.*got f=1, n=4"):
        krum(np.zeros((4, 1)), 1)
    with pytest.raises(ValueError, match="1 <= m <= n"):
        multi_krum(np.zeros((5, 1)), 1, m=6)
    with pytest.raises(ValueError, match="unknown aggregator 'bulyan'; known: krum, mean"):
        get_aggregator("bulyan")


def test_dtype_kept() -> None:
    x = X.astype(np.float32)
    for name in ("mean", "trimmed_mean", "median", "krum", "nnm+trimmed_mean"):
        assert get_aggregator(name)(x, 1).dtype == np.float32, name
