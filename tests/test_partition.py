import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.data.partition import dirichlet, iid, partition, shards


def labels(n=1000, classes=10, seed=0):
    return np.random.default_rng(seed).integers(0, classes, n)


def check_disjoint_cover(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == n and len(np.unique(allidx)) == n


@given(n=st.integers(10, 500), k=st.integers(1, 10), seed=st.integers(0, 2**16))
@settings(max_examples=40, deadline=None)
def test_iid_sizes_and_cover(n, k, seed):
    parts = iid(n, k, np.random.default_rng(seed))
    check_disjoint_cover(parts, n)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_cover_min_size_and_determinism():
    y = labels()
    a = dirichlet(y, 20, 0.5, np.random.default_rng(1), min_size=5)
    b = dirichlet(y, 20, 0.5, np.random.default_rng(1), min_size=5)
    check_disjoint_cover(a, len(y))
    assert min(len(p) for p in a) >= 5
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    c = dirichlet(y, 20, 0.5, np.random.default_rng(2), min_size=5)
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))


def label_skew(parts, y, classes=10):
    """Mean over clients of the total-variation distance between its label mix and the global one."""
    glob = np.bincount(y, minlength=classes) / len(y)
    tv = [0.5 * np.abs(np.bincount(y[p], minlength=classes) / len(p) - glob).sum() for p in parts]
    return float(np.mean(tv))


def test_small_alpha_means_more_label_skew():
    y = labels(4000)
    skew = {a: label_skew(dirichlet(y, 20, a, np.random.default_rng(0)), y) for a in (0.1, 1.0, 100.0)}
    assert skew[0.1] > skew[1.0] > skew[100.0]
    assert skew[100.0] < 0.1 and skew[0.1] > 0.5


def test_shards_give_few_labels_per_client():
    y = np.repeat(np.arange(10), 100)
    parts = shards(y, 10, 2, np.random.default_rng(0))
    check_disjoint_cover(parts, len(y))
    assert all(len(np.unique(y[p])) <= 2 for p in parts)


def test_impossible_requests_fail_with_reasons():
    with pytest.raises(ValueError, match="cannot give"):
        dirichlet(labels(10), 20, 0.5, np.random.default_rng(0), min_size=1)
    with pytest.raises(ValueError, match="unknown partition kind"):
        partition(labels(), 2, "random", np.random.default_rng(0))


def test_client_partitions_are_the_same_in_every_process_call(cfg_factory):
    from fedsim.data.datasets import client_indices, load_partition
    cfg = cfg_factory("data.partition.kind=dirichlet", "data.partition.alpha=0.3")
    idx = client_indices(cfg.data, cfg.seed)
    check_disjoint_cover(list(idx), sum(len(i) for i in idx))
    x, y = load_partition(cfg.data, cfg.seed, 3)
    assert x.shape[1:] == (1, 8, 8) and x.dtype == np.float32 and len(x) == len(idx[3])
    assert 0.0 <= x.min() and x.max() <= 1.0
