"""The dataset interface the engines use: config checks, client_sizes, load_partition, split errors."""

import numpy as np
import pytest

from fedsim.config import ConfigError, check_plugins, load_config
from fedsim.data.datasets import client_indices, client_sizes, load_dataset, load_partition


def cfg(*overrides):
    return load_config(None, ["data.name=digits", "data.num_clients=10", "data.partition.kind=iid", *overrides])


@pytest.mark.parametrize("overrides, msg", [
    (["data.name=synthetic"], "'data.partition.kind': dataset 'synthetic' comes split by client.*natural"),
    (["data.partition.kind=natural"], "'data.partition.kind': 'natural' needs a dataset split by client.*synthetic"),
    (["data.name=synthetic", "data.partition.kind=natural", "data.params={alfa: 1}"],
     "'data.params.alfa': unknown key; allowed: alpha, beta"),
    (["data.name=synthetic", "data.partition.kind=natural", "data.params={beta: -1}"],
     "'data.params.beta': .*greater than or equal to 0"),
    (["data.name=synthetic", "data.partition.kind=natural", "data.params={min_size: 60, max_size: 10}"],
     "max_size \\(10\\) must be >= min_size \\(60\\)"),
    (["data.name=femnist", "data.partition.kind=natural", "data.params={max_test: -1}"], "'data.params.max_test'"),
    (["data.params={scale: 2}"], "'data.params': dataset 'digits': unknown parameter 'scale'"),
    (["data.params={seed: 2}"], "'data.params.seed': set by fedsim"),
])
def test_config_errors_name_the_key(overrides, msg):
    c = cfg(*overrides)
    with pytest.raises(ConfigError, match=msg):
        check_plugins(c)
    with pytest.raises(ConfigError, match=msg):
        load_dataset(c.data, c.seed)


def test_valid_natural_config_passes_check_plugins():
    check_plugins(cfg("data.name=synthetic", "data.partition.kind=natural", "data.params={alpha: 0, beta: 0.5}"))


def test_client_sizes_of_an_index_partition_are_its_lengths():
    c = cfg("data.partition.kind=dirichlet", "data.partition.alpha=0.5")
    sizes = client_sizes(c.data, c.seed)
    idx = client_indices(c.data, c.seed)
    assert sizes.dtype == np.int64 and sizes.tolist() == [len(i) for i in idx]
    assert sizes.sum() == len(load_dataset(c.data, c.seed).y_train)
    assert not sizes.flags.writeable
    x, y = load_partition(c.data, c.seed, 4)
    assert len(x) == len(y) == sizes[4]


def test_client_indices_refuses_a_natural_dataset():
    c = cfg("data.name=synthetic", "data.partition.kind=natural")
    with pytest.raises(ValueError, match="natural"):
        client_indices(c.data, c.seed)


@pytest.mark.parametrize("overrides, msg", [
    # issue 14: 1,000 clients from MNIST-5k's 4,000 training images, Dirichlet 0.5
    (["data.name=mnist5k", "data.num_clients=1000", "data.partition.kind=dirichlet", "data.partition.min_size=5"],
     "4000 training examples.*4000 examples cannot give data.num_clients=1000 clients data.partition.min_size=5"),
    (["data.num_clients=1000", "data.partition.kind=iid"],
     "1438 examples cannot give data.num_clients=1000 clients data.partition.min_size=2"),
    (["data.num_clients=800", "data.partition.kind=shards"],
     "data.num_clients=800 x data.partition.shards_per_client=2 = 1600 shards cannot be cut from 1438"),
])
def test_an_impossible_split_fails_at_load_time(overrides, msg):
    c = cfg(*overrides)
    with pytest.raises(ConfigError, match=msg):
        load_dataset(c.data, c.seed)


def test_a_dirichlet_split_that_never_gives_min_size_says_so():
    # 1,438 digits over 200 clients at alpha 0.05: some client always gets < 5 of ~7 each
    c = cfg("data.num_clients=200", "data.partition.kind=dirichlet", "data.partition.alpha=0.05",
            "data.partition.min_size=5")
    with pytest.raises(ConfigError, match="no split of 1438 examples gave every one of data.num_clients=200 "
                                          "clients data.partition.min_size=5"):
        load_dataset(c.data, c.seed)
