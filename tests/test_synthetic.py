"""FedProx's Synthetic(alpha, beta): shapes, determinism, heterogeneity, sizes, test set."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.data import synthetic as sy
from fedsim.data.datasets import client_sizes, load_dataset, load_partition

P = sy.SyntheticParams


def synth_cfg(*overrides):
    from fedsim.config import load_config

    base = ["data.name=synthetic", "data.partition.kind=natural", "data.num_clients=50"]
    return load_config(None, base + list(overrides))


def test_feature_covariance_is_j_to_the_minus_1_2():
    std = sy.feature_std()
    assert std.shape == (60,)
    assert std[0] == 1.0 and std[1] ** 2 == pytest.approx(2 ** -1.2) and std[59] ** 2 == pytest.approx(60 ** -1.2)


def test_labels_are_the_argmax_of_the_client_model():
    rng = np.random.default_rng(0)
    model = sy.draw_client_model(rng, P(), seed=0)
    x, y = sy.draw_examples(model, 200, rng)
    assert x.shape == (200, 60) and x.dtype == np.float32 and y.dtype == np.int64
    logits = x.astype(np.float64) @ model.w.T + model.b
    assert np.array_equal(y, logits.argmax(1))
    assert ((0 <= y) & (y < 10)).all()


def test_client_data_is_the_same_in_any_order_and_fresh_process():
    p = P(alpha=0.5, beta=0.5)
    a = [sy.client_data.__wrapped__(7, k, 30, p) for k in (3, 1, 2)]
    b = [sy.client_data.__wrapped__(7, k, 30, p) for k in (2, 3, 1)]
    assert np.array_equal(a[0][0], b[1][0]) and np.array_equal(a[1][1], b[2][1])
    code = ("import numpy as np; from fedsim.data import synthetic as sy; "
            "x, y = sy.client_data(7, 3, 30, sy.SyntheticParams(alpha=0.5, beta=0.5)); "
            "print(x.tobytes().hex()[:400], y.tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == a[0][0].tobytes().hex()[:400]
    assert " ".join(out[1:]) == str(a[0][1].tolist())


@given(seed=st.integers(0, 2**32 - 1), client=st.integers(0, 10**6), n=st.integers(1, 300),
       alpha=st.floats(0, 10), beta=st.floats(0, 10), iid=st.booleans())
@settings(max_examples=200, deadline=None)
def test_any_client_is_well_formed_and_reproducible(seed, client, n, alpha, beta, iid):
    p = P(alpha=alpha, beta=beta, iid=iid)
    x, y = sy.client_data.__wrapped__(seed, client, n, p)
    x2, y2 = sy.client_data.__wrapped__(seed, client, n, p)
    assert x.shape == (n, 60) and y.shape == (n,) and np.isfinite(x).all()
    assert ((0 <= y) & (y < 10)).all()
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


def test_different_clients_and_seeds_differ():
    p = P()
    x0, _ = sy.client_data(0, 0, 20, p)
    x1, _ = sy.client_data(0, 1, 20, p)
    x0b, _ = sy.client_data(1, 0, 20, p)
    assert not np.array_equal(x0, x1) and not np.array_equal(x0, x0b)


def test_client_data_is_read_only_because_it_is_cached():
    x, y = sy.client_data(0, 0, 20, P())
    with pytest.raises(ValueError):
        x[0, 0] = 1.0


def test_sizes_power_law_min_max_and_prefix_stable():
    p = P(min_size=50, max_size=10_000)
    s = sy.client_sizes(100_000, 3, p)
    assert s.dtype == np.int64 and s.shape == (100_000,)
    assert s.min() >= 50 and s.max() <= 10_000
    # floor(lognormal(4, 2)) + 50: the median is about e^4 + 50 = 104.6
    assert 95 <= np.median(s) <= 115
    # the cap moves P(lognormal(4, 2) > 9,950) = P(Z > 2.60) = 0.47% of the clients
    assert 0.003 < np.mean(s == 10_000) < 0.007
    assert np.array_equal(sy.client_sizes(1000, 3, p), s[:1000])


def test_alpha_beta_zero_share_the_mean_and_beta_spreads_it():
    """B_k ~ N(0, beta) shifts every feature mean of client k: the per-client mean of x
    is about B_k (+- 1/sqrt(60) from v_k, +- noise). beta = 0: spread ~0.13; beta = 1: ~1."""
    def spread(beta):
        p = P(alpha=0.0, beta=beta)
        means = [sy.client_data.__wrapped__(11, k, 200, p)[0].mean() for k in range(300)]
        return float(np.std(means)), float(np.mean(means))

    s0, m0 = spread(0.0)
    s1, _ = spread(1.0)
    assert s0 < 0.2 and abs(m0) < 0.05
    assert 0.8 < s1 < 1.25


def test_alpha_spreads_the_model_mean():
    """W_k ~ N(u_k, 1), u_k ~ N(0, alpha): the mean of W_k's 600 entries is about u_k."""
    def spread(alpha):
        return np.std([sy.draw_client_model(np.random.default_rng([5, k]), P(alpha=alpha), 5).w.mean()
                       for k in range(300)])

    assert spread(0.0) < 0.08 and 1.5 < spread(2.0) < 2.5


def test_iid_variant_shares_one_model():
    p = P(iid=True)
    a = sy.draw_client_model(np.random.default_rng(1), p, seed=4)
    b = sy.draw_client_model(np.random.default_rng(2), p, seed=4)
    assert np.array_equal(a.w, b.w) and np.array_equal(a.b, b.b) and not a.v.any()


def test_dataset_interface_without_training_data():
    cfg = synth_cfg("data.params={alpha: 0.5, beta: 0.5, test_clients: 20, test_examples: 100}")
    ds = load_dataset(cfg.data, cfg.seed)
    assert ds.natural and ds.input_shape == (60,) and ds.num_classes == 10
    assert ds.x_test.shape == (100, 60) and ds.y_test.shape == (100,)
    with pytest.raises(AttributeError, match="per client"):
        ds.x_train  # noqa: B018
    sizes = client_sizes(cfg.data, cfg.seed)
    assert sizes.shape == (50,) and sizes.dtype == np.int64 and (sizes >= 50).all()
    for k in (0, 17, 49):
        x, y = load_partition(cfg.data, cfg.seed, k)
        assert x.shape == (sizes[k], 60) and y.shape == (sizes[k],)
    with pytest.raises(IndexError, match="num_clients=50"):
        load_partition(cfg.data, cfg.seed, 50)


def test_test_set_comes_from_test_streams_of_training_models():
    p = P(test_clients=5, test_examples=10)
    x, y = sy.test_set(5, 9, p)  # every client, 2 examples each
    assert x.shape == (10, 60)
    model = sy.draw_client_model(np.random.default_rng([9, sy._CLIENT, 0]), p, 9)
    assert np.array_equal(y[:2], (x[:2].astype(np.float64) @ model.w.T + model.b).argmax(1))
    train_x, _ = sy.client_data(9, 0, 2, p)
    assert not np.array_equal(train_x, x[:2])


def test_100k_clients_are_cheap():
    cfg = synth_cfg("data.num_clients=100000", "data.params={test_clients: 100, test_examples: 500}")
    sizes = client_sizes(cfg.data, cfg.seed)
    assert sizes.shape == (100_000,)
    x, y = load_partition(cfg.data, cfg.seed, 99_999)
    assert len(x) == sizes[99_999]


def test_a_run_on_synthetic_goes_end_to_end_in_process(tmp_path, cfg_factory):
    from tests.conftest import run_inprocess

    cfg = cfg_factory("data.name=synthetic", "data.partition.kind=natural", "data.num_clients=20",
                      "data.params={alpha: 0.5, beta: 0.5, max_size: 200, test_clients: 20, test_examples: 400}",
                      "model.name=logreg", "model.params={}", "clients_per_round=4", "rounds=2",
                      "train.batch_size=10", "train.lr=0.05")
    summary = run_inprocess(cfg, tmp_path)
    assert summary["rounds"] == 2 and summary["failed"] == 0 and summary["rejected"] == 0
    assert 0.0 <= summary["final_accuracy"] <= 1.0
