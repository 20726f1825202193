"""A dataset from one ``.npz`` file: what an edge device loads without scikit-learn.

The file holds numpy arrays (no pickled objects: it is read with
``np.load(allow_pickle=False)``):

==============  ==================================================================
key             content
==============  ==================================================================
``x_train``     (N, ...) inputs: uint8 (scaled by 1/255) or floats (kept, as float32)
``y_train``     (N,) integer labels in [0, C)
``x_test``      optional, (M, ...) like ``x_train``
``y_test``      optional, (M,) labels; without a test split one is cut from the
                training set with ``data.test_fraction`` (stratified, seeded)
``num_classes`` optional scalar C (default: the largest label + 1)
==============  ==================================================================

Images (N, H, W) get a channel axis, (N, 1, H, W), as the IDX datasets; (N, D) and
(N, C, H, W) are kept. Every node partitions the same file with the run seed, so
every device of a deployment needs an identical copy at the ``data.path`` of the
config. Make one from any source with :func:`write_npz`.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from fedsim.registry import DATASETS

from . import MAX_DATA_BYTES, DataError
from .datasets import Dataset, stratified_split

REQUIRED = ("x_train", "y_train")
MAX_CLASSES = 100_000  # a label past this is a corrupt file, not a class (the model has C outputs)
OPTIONAL = ("x_test", "y_test", "num_classes")


def _inputs(x: np.ndarray, key: str) -> np.ndarray:
    if x.ndim < 2:
        raise ValueError(f"{key}: expected (N, ...) inputs; got shape {x.shape}")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / np.float32(255.0)  # pixel bytes -> [0, 1]
    elif np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float32)
    else:
        raise ValueError(f"{key}: expected uint8 or float inputs; got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError(f"{key}: inputs must be finite")
    return x[:, None] if x.ndim == 3 else x  # (N, H, W) -> (N, 1, H, W)


def _labels(y: np.ndarray, n: int, key: str) -> np.ndarray:
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{key}: expected {n} integer labels; got shape {y.shape}, dtype {y.dtype}")
    if n and y.min() < 0:
        raise ValueError(f"{key}: labels must be >= 0; got {y.min()}")
    return y.astype(np.int64)


def _member_bytes(z: zipfile.ZipFile, name: str) -> int:
    """The bytes an ``.npy`` member declares (from its header: shape x itemsize), unread."""
    with z.open(name) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)  # what np.load allocates
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"member {name!r}: .npy format version {version} is not supported")
    count = 1
    for d in shape:
        count *= int(d)
    return count * dtype.itemsize


def load_arrays(path: str | Path, max_bytes: int = MAX_DATA_BYTES) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, no pickle; each member's declared size is checked first.

    Raises :class:`DataError` naming the file: not a zip, truncated, a corrupt member,
    a pickled object, or a member declaring more than ``max_bytes`` (before allocating it).
    """
    p = Path(path)
    try:
        with zipfile.ZipFile(p) as z:
            for name in z.namelist():
                n = _member_bytes(z, name)
                if n > max_bytes:
                    raise ValueError(f"member {name!r} declares {n} bytes, more than the limit ({max_bytes})")
        with np.load(p, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except ValueError as err:  # object arrays need pickle: refused; bad headers
        raise DataError(f"npz file {str(p)!r}: {' '.join(str(err).split())}") from None
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, KeyError) as err:
        raise DataError(f"npz file {str(p)!r}: not a readable .npz file "
                        f"({type(err).__name__}: {getattr(err, 'strerror', None) or err})") from None


def read_npz(path: str | Path, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Load a dataset from an ``.npz`` file laid out as in the module docstring.

    Raises
    ------
    FileNotFoundError
        No such file.
    DataError (a ValueError)
        Unreadable, a missing key, an unknown key, a pickled object, inconsistent shapes,
        labels outside ``[0, num_classes)``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"npz dataset {str(p)!r} not found (set data.path to the .npz file)")
    arrays = load_arrays(p)
    try:
        return _dataset(arrays, test_fraction, seed)
    except ValueError as err:
        raise DataError(f"npz dataset {str(p)!r}: {err}") from None


def _dataset(arrays: dict[str, np.ndarray], test_fraction: float, seed: int) -> Dataset:
    missing = [k for k in REQUIRED if k not in arrays]
    unknown = sorted(set(arrays) - set(REQUIRED) - set(OPTIONAL))
    if missing or unknown:
        raise ValueError(f"missing keys {missing}, unknown keys {unknown}; "
                         f"expected {list(REQUIRED)} and optionally {list(OPTIONAL)}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise ValueError("give both x_test and y_test, or neither")
    x = _inputs(arrays["x_train"], "x_train")
    y = _labels(arrays["y_train"], len(x), "y_train")
    if len(x) == 0:
        raise ValueError("x_train holds no examples")
    if "x_test" in arrays:
        xt = _inputs(arrays["x_test"], "x_test")
        yt = _labels(arrays["y_test"], len(xt), "y_test")
        if xt.shape[1:] != x.shape[1:]:
            raise ValueError(f"x_test examples are {xt.shape[1:]}, x_train's {x.shape[1:]}")
    else:
        tr, te = stratified_split(y, test_fraction, np.random.default_rng([seed, 0xDA7A]))
        x, y, xt, yt = x[tr], y[tr], x[te], y[te]
    top = int(max(y.max(initial=0), yt.max(initial=0))) + 1
    if "num_classes" in arrays:
        nc = arrays["num_classes"]
        if nc.shape != () or not np.issubdtype(nc.dtype, np.integer):
            raise ValueError(f"num_classes must be an integer scalar; got shape {nc.shape}, dtype {nc.dtype}")
        num_classes = int(nc)
    else:
        num_classes = top
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes={num_classes} must be in [2, {MAX_CLASSES}]")
    if num_classes < top:
        raise ValueError(f"labels must be in [0, num_classes={num_classes}); they reach {top - 1}")
    return Dataset(x, y, xt, yt, num_classes)


def write_npz(path: str | Path, x_train: np.ndarray, y_train: np.ndarray,
              x_test: np.ndarray | None = None, y_test: np.ndarray | None = None) -> Path:
    """Write arrays in the layout :func:`read_npz` reads (uncompressed ``np.savez``)."""
    arrays = {"x_train": np.asarray(x_train), "y_train": np.asarray(y_train)}
    if (x_test is None) != (y_test is None):
        raise ValueError("give both x_test and y_test, or neither")
    if x_test is not None:
        arrays.update(x_test=np.asarray(x_test), y_test=np.asarray(y_test))
    if any(a.dtype == object for a in arrays.values()):
        raise ValueError("object arrays cannot be read back without pickle")
    p = Path(path)
    with p.open("wb") as f:
        # mypy matches **arrays against savez's allow_pickle: bool too; the keys are the four array names
        np.savez(f, **arrays)  # type: ignore[arg-type]
    return p


@DATASETS.register("npz")
def npz(path: str | None = None, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Arrays from an ``.npz`` file at ``data.path`` (numpy only; for edge devices)."""
    if not path:
        raise FileNotFoundError("dataset 'npz' needs data.path: an .npz file with x_train and y_train")
    return read_npz(path, test_fraction, seed)
