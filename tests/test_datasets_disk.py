"""Loaders of files a researcher has on disk, on small files written here in the exact formats:
CIFAR-10 binary, LEAF JSON (FEMNIST, Shakespeare), Fashion-MNIST IDX (plain and gzip)."""

import gzip
import json
import pickle

import numpy as np
import pytest

from fedsim.config import load_config
from fedsim.data import cifar, leaf
from fedsim.data.datasets import client_sizes, fashion_mnist, load_dataset, load_partition
from fedsim.data.idx import write_idx


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Parsed copies (LEAF's memory-mapped arrays) go to this test's directory, not ~/.cache."""
    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ----------------------------------------------------------------------------- CIFAR-10


def cifar_records(labels, rng):
    """Records as the format says: 1 label byte, then 1,024 R, 1,024 G, 1,024 B bytes."""
    pix = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
    raw = b"".join(bytes([lab]) + pix[i].tobytes() for i, lab in enumerate(labels))
    return raw, pix


def write_cifar(d, per_file=3):
    rng = np.random.default_rng(0)
    pixels, labels = [], []
    for name in (*cifar.TRAIN_FILES, cifar.TEST_FILE):
        lab = rng.integers(0, 10, per_file).tolist()
        raw, pix = cifar_records(lab, rng)
        (d / name).write_bytes(raw)
        pixels.append(pix)
        labels.append(lab)
    return pixels, labels


def test_cifar10_reads_records_label_then_planes(tmp_path):
    pixels, labels = write_cifar(tmp_path)
    ds = cifar.cifar10(path=str(tmp_path))
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.y_train.tolist() == sum(labels[:5], []) and ds.y_test.tolist() == labels[5]
    assert ds.x_train.dtype == np.float32
    # record 4 = file 2's second image; channel 1 (green) pixel (5, 7) is byte 1 + 1024 + 5*32 + 7
    raw = (tmp_path / "data_batch_2.bin").read_bytes()
    assert ds.x_train[4, 1, 5, 7] * 255 == pytest.approx(raw[cifar.RECORD + 1 + 1024 + 5 * 32 + 7])
    np.testing.assert_allclose(ds.x_test * 255, pixels[5], atol=1e-4)
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10


def test_cifar10_second_load_is_memory_mapped_and_equal(tmp_path):
    write_cifar(tmp_path)
    first, second = cifar.cifar10(path=str(tmp_path)), cifar.cifar10(path=str(tmp_path))
    assert isinstance(second.x_train, np.memmap)
    assert np.array_equal(first.x_train, second.x_train) and np.array_equal(first.y_test, second.y_test)


def test_cifar10_finds_the_batches_bin_subdirectory(tmp_path):
    (tmp_path / "cifar-10-batches-bin").mkdir()
    write_cifar(tmp_path / "cifar-10-batches-bin", per_file=1)
    assert len(cifar.cifar10(path=str(tmp_path)).y_train) == 5


def test_cifar10_truncated_file_names_it(tmp_path):
    write_cifar(tmp_path)
    bad = tmp_path / "data_batch_3.bin"
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(ValueError, match="data_batch_3.bin.*not a whole number of 3073-byte records"):
        cifar.cifar10(path=str(tmp_path))


def test_cifar10_bad_label_names_the_file(tmp_path):
    write_cifar(tmp_path)
    raw, _ = cifar_records([3, 12], np.random.default_rng(1))
    (tmp_path / "test_batch.bin").write_bytes(raw)
    with pytest.raises(ValueError, match="test_batch.bin.*record 1 has label 12"):
        cifar.cifar10(path=str(tmp_path))


def test_cifar10_python_version_is_refused_unread(tmp_path, monkeypatch):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    (d / "data_batch_1").write_bytes(pickle.dumps({"labels": [1]}))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(ValueError, match="python version, which is pickled"):
        cifar.cifar10(path=str(tmp_path))


def test_cifar10_missing_files_are_listed(tmp_path):
    with pytest.raises(FileNotFoundError, match="lacks data_batch_1.bin"):
        cifar.cifar10(path=str(tmp_path))


# ----------------------------------------------------------------------------- LEAF


def leaf_doc(user_data):
    users = list(user_data)
    return {"users": users, "num_samples": [len(user_data[u]["y"]) for u in users], "user_data": user_data}


def femnist_user(n, label, rng):
    return {"x": rng.random((n, 784)).round(4).tolist(), "y": [label] * n}


def write_femnist(root):
    rng = np.random.default_rng(0)
    for split, n in (("train", 1), ("test", 0)):
        (root / split).mkdir(parents=True)
        # two files, read in name order: clients 0, 1 from a, client 2 from b
        a = {"w0": femnist_user(3 + n * 4, 5, rng), "w1": femnist_user(2 + n, 61, rng)}
        b = {"w2": femnist_user(4, 0, rng)}
        (root / split / "all_data_0_niid_train.json").write_text(json.dumps(leaf_doc(a)))
        (root / split / "all_data_1_niid_train.json").write_text(json.dumps(leaf_doc(b)))
    return a, b


def leaf_cfg(name, root, *overrides):
    return load_config(None, [f"data.name={name}", "data.partition.kind=natural", f"data.path={root}",
                              "data.num_clients=3", "clients_per_round=1", *overrides])


def test_femnist_one_client_per_writer_in_file_order(tmp_path):
    write_femnist(tmp_path)
    c = leaf_cfg("femnist", tmp_path)
    ds = load_dataset(c.data, c.seed)
    assert ds.natural and ds.num_classes == 62 and ds.input_shape == (1, 28, 28)
    assert client_sizes(c.data, c.seed).tolist() == [7, 3, 4]
    x, y = load_partition(c.data, c.seed, 1)
    assert x.shape == (3, 1, 28, 28) and y.tolist() == [61, 61, 61]
    train_w1 = json.loads((tmp_path / "train" / "all_data_0_niid_train.json").read_text())["user_data"]["w1"]
    np.testing.assert_allclose(x.reshape(3, 784), np.asarray(train_w1["x"], np.float32))
    assert len(ds.y_test) == 3 + 2 + 4  # every test example of the three writers


def test_leaf_is_parsed_once_then_memory_mapped(tmp_path, private_cache):
    write_femnist(tmp_path)
    first = leaf.LeafSplit(tmp_path / "train", "femnist")
    assert len(list(private_cache.glob("leaf-femnist-*"))) == 1
    second = leaf.LeafSplit(tmp_path / "train", "femnist")  # another worker: reads the cache
    assert isinstance(second.x, np.memmap) and not second.x.flags.writeable
    assert second.users == first.users == ["w0", "w1", "w2"]
    assert np.array_equal(second.x, first.x) and np.array_equal(second.y, first.y)
    # a damaged cache is rebuilt (a new file: never truncate one that is mapped);
    # a changed source file gets a new entry
    expected = np.array(first.x)
    damaged = next(private_cache.glob("leaf-femnist-*")) / "x.npy"
    damaged.unlink()
    damaged.write_bytes(b"\x93NUMPY garbage")
    assert np.array_equal(leaf.LeafSplit(tmp_path / "train", "femnist").x, expected)
    f = tmp_path / "train" / "all_data_1_niid_train.json"
    f.write_text(json.dumps(leaf_doc({"w9": femnist_user(2, 7, np.random.default_rng(3))})))
    assert leaf.LeafSplit(tmp_path / "train", "femnist").users == ["w0", "w1", "w9"]
    assert len(list(private_cache.glob("leaf-femnist-*"))) == 2


def test_femnist_fewer_clients_and_test_subsample(tmp_path):
    write_femnist(tmp_path)
    c = leaf_cfg("femnist", tmp_path, "data.num_clients=2", "data.params={max_test: 4}")
    ds = load_dataset(c.data, c.seed)
    assert len(ds.y_test) == 4 and set(ds.y_test.tolist()) <= {5, 61}
    with pytest.raises(ValueError, match="data.num_clients=4 but .* has 3 users"):
        c4 = leaf_cfg("femnist", tmp_path, "data.num_clients=4")
        load_dataset(c4.data, c4.seed)


@pytest.mark.parametrize("mutate, msg", [
    (lambda t: t[: len(t) // 2], "all_data_1_niid_train.json.*not valid JSON, truncated"),
    (lambda t: json.dumps({"users": ["w2"]}), "all_data_1_niid_train.json.*expected an object with users"),
    (lambda t: t.replace('"num_samples": [4]', '"num_samples": [5]'), "user 'w2'.*num_samples says 5, x has 4"),
    (lambda t: json.dumps(leaf_doc({"w2": {"x": [[0.5] * 783], "y": [1]}})), "user 'w2'.*expected x of shape"),
    (lambda t: json.dumps(leaf_doc({"w2": {"x": [[0.5] * 784], "y": [62]}})), "user 'w2'.*labels must be"),
    (lambda t: json.dumps(leaf_doc({"w2": {"x": [["a"] * 784], "y": [1]}})), "user 'w2'.*784 numbers"),
])
def test_femnist_malformed_file_names_file_and_user(tmp_path, mutate, msg):
    write_femnist(tmp_path)
    f = tmp_path / "train" / "all_data_1_niid_train.json"
    f.write_text(mutate(f.read_text()))
    c = leaf_cfg("femnist", tmp_path)
    with pytest.raises(ValueError, match=msg):
        load_dataset(c.data, c.seed)


def test_shakespeare_maps_characters_to_leaf_vocabulary(tmp_path):
    assert len(leaf.ALL_LETTERS) == 80 and leaf.ALL_LETTERS[0] == "\n" and leaf.ALL_LETTERS[-1] == "}"
    line = ("To be, or not to be: that is the question. " * 2)[:80]
    data = {"HAMLET": {"x": [line, line[1:] + "!"], "y": ["W", "}"]}, "OPHELIA": {"x": [line], "y": ["\n"]}}
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "shakespeare.json").write_text(json.dumps(leaf_doc(data)))
    c = leaf_cfg("shakespeare", tmp_path, "data.num_clients=2")
    ds = load_dataset(c.data, c.seed)
    assert ds.num_classes == 80 and ds.input_shape == (80,)
    x, y = load_partition(c.data, c.seed, 0)
    assert x.shape == (2, 80) and x.dtype == np.int64
    assert x[0].tolist() == [leaf.ALL_LETTERS.index(ch) for ch in line]
    assert y.tolist() == [leaf.ALL_LETTERS.index("W"), 79]
    assert x[1, -1] == leaf.ALL_LETTERS.index("!") == 2
    assert client_sizes(c.data, c.seed).tolist() == [2, 1]


def test_char_lstm_runs_on_shakespeare_in_process(tmp_path, cfg_factory):
    from tests.conftest import run_inprocess

    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list("abcdefgh ,."), 400))
    roles = {f"R{k}": {"x": [text[i:i + 80] for i in range(k, k + 40, 4)],
                       "y": [text[i + 80] for i in range(k, k + 40, 4)]} for k in range(4)}
    for split in ("train", "test"):
        (tmp_path / "data" / split).mkdir(parents=True)
        (tmp_path / "data" / split / "s.json").write_text(json.dumps(leaf_doc(roles)))
    cfg = cfg_factory("data.name=shakespeare", "data.partition.kind=natural", f"data.path={tmp_path / 'data'}",
                      "data.num_clients=4", "clients_per_round=2", "rounds=1", "model.name=char-lstm",
                      "model.params={hidden: 8, layers: 1}", "train.batch_size=5")
    summary = run_inprocess(cfg, tmp_path / "run")
    assert summary["rounds"] == 1 and summary["failed"] == 0 and summary["rejected"] == 0
    assert summary["final_accuracy"] is not None


@pytest.mark.parametrize("x, y, msg", [
    (["short"], ["a"], "string of 80 characters"),
    (["a" * 80], ["ab"], "one character"),
    (["a" * 79 + "\u00e9"], ["a"], "character '\u00e9' is not in LEAF's 80-character vocabulary"),
    (["a" * 79 + "$"], ["a"], "character '\\$' is not in"),
])
def test_shakespeare_rejects_what_leaf_cannot_encode(tmp_path, x, y, msg):
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "s.json").write_text(json.dumps(leaf_doc({"R": {"x": x, "y": y}})))
    c = leaf_cfg("shakespeare", tmp_path, "data.num_clients=1")
    with pytest.raises(ValueError, match="s.json.*user 'R'.*" + msg):
        load_dataset(c.data, c.seed)


def test_leaf_without_files_says_what_data_path_needs(tmp_path):
    c = leaf_cfg("femnist", tmp_path)
    with pytest.raises(FileNotFoundError, match="train/ and test/"):
        load_dataset(c.data, c.seed)


# ----------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_idx_plain_and_gzip(tmp_path, gz):
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": rng.integers(0, 10, 12).astype(np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": np.array([9, 0, 3, 9], np.uint8)}
    for name, a in arrays.items():
        write_idx(tmp_path / name, a)
        if gz:  # Debian's package ships the .gz files only
            p = tmp_path / name
            (tmp_path / f"{name}.gz").write_bytes(gzip.compress(p.read_bytes()))
            p.unlink()
    ds = fashion_mnist(path=str(tmp_path))
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.y_test.tolist() == [9, 0, 3, 9]
    np.testing.assert_allclose(ds.x_train[:, 0] * 255, arrays["train-images-idx3-ubyte"], atol=1e-4)


def test_fashion_mnist_is_looked_for_where_make_data_puts_it(tmp_path, monkeypatch):
    from fedsim.data import datasets

    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path))
    assert datasets.fashion_mnist_dirs()[0] == "/usr/share/datasets/fashion-mnist"
    assert datasets.fashion_mnist_dirs()[-1] == str(tmp_path / "datasets" / "fashion-mnist")


def test_cached_arrays_are_copy_on_write(tmp_path):
    write_cifar(tmp_path, per_file=1)
    cifar.cifar10(path=str(tmp_path))
    ds = cifar.cifar10(path=str(tmp_path))
    before = np.array(ds.x_test)
    ds.x_test[0, 0, 0, 0] = 7.0  # private to this mapping: the file keeps its bytes
    assert np.array_equal(cifar.cifar10(path=str(tmp_path)).x_test, before)
