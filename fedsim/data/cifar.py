"""CIFAR-10 from its binary version (Krizhevsky, 2009), numpy only; never downloaded.

``data.path`` is the directory ``cifar-10-batches-bin`` of ``cifar-10-binary.tar.gz``
(https://www.cs.toronto.edu/~kriz/cifar.html), or a directory holding it. Files:
``data_batch_1.bin`` .. ``data_batch_5.bin`` (training, 10,000 records each) and
``test_batch.bin``. A record is 3,073 bytes: one label byte (0-9), then 3,072 pixel bytes,
1,024 red, 1,024 green, 1,024 blue, each 32x32 row-major. So a file of N records is
exactly 3,073 N bytes, which is what the reader checks.

The "python version" (``cifar-10-batches-py``, files without ``.bin``) is pickled and is
refused: fedsim never unpickles a file.

Images come out as float32 in [0, 1], shape (N, 3, 32, 32); labels as int64. The
converted arrays (740 MB) are kept memory-mapped in the cache (:mod:`.arraycache`), so the
workers of one machine share them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedsim.registry import DATASETS

from .arraycache import Built, memmapped
from .datasets import Dataset

RECORD = 1 + 3 * 32 * 32
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
NUM_CLASSES = 10


def read_cifar_bin(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one CIFAR-10 binary file.

    Raises
    ------
    ValueError
        The size is not a whole number of 3,073-byte records (truncated or not CIFAR-10
        binary), or a label byte is not 0-9. The message names the file.
    """
    p = Path(path)
    raw = np.fromfile(p, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD:
        raise ValueError(f"CIFAR-10 file {str(p)!r}: {raw.size} bytes is not a whole number of "
                         f"{RECORD}-byte records (1 label byte + 3072 pixel bytes): truncated or not "
                         "the binary version")
    rec = raw.reshape(-1, RECORD)
    labels = rec[:, 0].astype(np.int64)
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        raise ValueError(f"CIFAR-10 file {str(p)!r}: record {int(bad[0])} has label {int(labels[bad[0]])}, "
                         f"expected 0-{NUM_CLASSES - 1}: not the CIFAR-10 binary version")
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


def find_cifar_dir(path: str | Path) -> Path:
    """The directory holding the six ``.bin`` files: ``path`` or its ``cifar-10-batches-bin``."""
    d = Path(path)
    for cand in (d, d / "cifar-10-batches-bin"):
        if all((cand / f).is_file() for f in (*TRAIN_FILES, TEST_FILE)):
            return cand
    for cand in (d, d / "cifar-10-batches-py"):
        if (cand / "data_batch_1").is_file() or (cand / "test_batch").is_file():
            raise ValueError(f"{str(cand)!r} holds CIFAR-10's python version, which is pickled; fedsim never "
                             "unpickles: get the binary version (cifar-10-binary.tar.gz, see docs/datasets.md)")
    missing = [f for f in (*TRAIN_FILES, TEST_FILE) if not (d / f).is_file()]
    raise FileNotFoundError(f"CIFAR-10 directory {str(d)!r} lacks {', '.join(missing)} (the binary version: "
                            "cifar-10-binary.tar.gz unpacked, see docs/datasets.md)")


def _scale(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / np.float32(255.0)


@DATASETS.register("cifar10")
def cifar10(path: str | None = None, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """CIFAR-10 (binary version) from ``data.path``: 50,000 training and 10,000 test images."""
    if not path:
        raise FileNotFoundError("dataset 'cifar10' needs data.path: the cifar-10-batches-bin directory")
    d = find_cifar_dir(path)
    files = [d / f for f in (*TRAIN_FILES, TEST_FILE)]

    def build() -> Built:
        parts = [read_cifar_bin(f) for f in files]
        x_train, y_train = np.concatenate([x for x, _ in parts[:5]]), np.concatenate([y for _, y in parts[:5]])
        return {"x_train": _scale(x_train), "y_train": y_train,
                "x_test": _scale(parts[5][0]), "y_test": parts[5][1]}, {}

    a, _ = memmapped("cifar10", files, "cifar10", build)
    return Dataset(a["x_train"], a["y_train"], a["x_test"], a["y_test"], NUM_CLASSES)
