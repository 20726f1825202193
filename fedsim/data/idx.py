"""Reader for the IDX format of MNIST and Fashion-MNIST (LeCun et al.), numpy only.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the data in C order. Files may
be gzip-compressed (``.gz``). Nothing is unpickled: the bytes are parsed as numbers.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(raw: bytes) -> np.ndarray:
    """Parse the bytes of an IDX file into an array of its declared shape and type."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError("not an IDX file: bad magic number")
    code, ndim = raw[2], raw[3]
    if code not in _TYPES:
        raise ValueError(f"IDX: unknown data type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError("IDX: truncated header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_TYPES[code])
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) != header + count * dtype.itemsize:
        raise ValueError(
            f"IDX: expected {count * dtype.itemsize} data bytes for shape {shape}, "
            f"found {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    p = Path(path)
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return parse_idx(raw)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8 or one of the IDX types) as an uncompressed IDX file."""
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _TYPES.items()}
    dt = array.dtype.newbyteorder("=")
    if dt not in codes:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    head = bytes([0, 0, codes[dt], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    Path(path).write_bytes(head + array.astype(dt.newbyteorder(">")).tobytes())


_NAMES = {
    "train_images": ("train-images-idx3-ubyte",),
    "train_labels": ("train-labels-idx1-ubyte",),
    "test_images": ("t10k-images-idx3-ubyte",),
    "test_labels": ("t10k-labels-idx1-ubyte",),
}


def find_idx_files(directory: str | Path) -> dict[str, Path]:
    """Locate the four MNIST-style IDX files in ``directory`` (plain or ``.gz``)."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"IDX directory {str(d)!r} does not exist")
    found: dict[str, Path] = {}
    for key, stems in _NAMES.items():
        for stem in stems:
            for cand in (d / stem, d / f"{stem}.gz", d / stem.replace("-idx", ".idx")):
                if cand.is_file():
                    found[key] = cand
                    break
            if key in found:
                break
        if key not in found:
            raise FileNotFoundError(f"IDX directory {str(d)!r} lacks {stems[0]}[.gz]")
    return found
