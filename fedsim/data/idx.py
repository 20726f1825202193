"""Reader for the IDX format of MNIST and Fashion-MNIST (LeCun et al.), numpy only.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the data in C order. Files may
be gzip-compressed (``.gz``). Nothing is unpickled: the bytes are parsed as numbers.
The header is read first and the declared size checked against the file (and, for a
gzip file, against :data:`fedsim.data.MAX_DATA_BYTES`) before any data is read, so a
truncated file or a small gzip file that declares gigabytes is refused with a
:class:`fedsim.data.DataError` that names the file.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Protocol

import numpy as np

from . import MAX_DATA_BYTES, DataError


class _Reader(Protocol):
    """What IDX bytes are read from: a file or a ``gzip.GzipFile`` over one."""

    def read(self, size: int = -1, /) -> bytes: ...


_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_header(head: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, header bytes) from the first bytes of an IDX file (at least 4)."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        raise ValueError("not an IDX file: bad magic number")
    code, ndim = head[2], head[3]
    if code not in _TYPES:
        raise ValueError(f"unknown data type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(head) < header:
        raise ValueError("truncated header")
    shape = tuple(int(d) for d in np.frombuffer(head, dtype=">u4", count=ndim, offset=4))
    return np.dtype(_TYPES[code]), shape, header


def _data_bytes(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    count = 1
    for d in shape:  # Python ints: no overflow
        count *= d
    return count * dtype.itemsize


def parse_idx(raw: bytes) -> np.ndarray:
    """Parse the bytes of an IDX file into an array of its declared shape and type."""
    dtype, shape, header = parse_header(raw[:4 + 4 * raw[3]] if len(raw) >= 4 else raw)
    expected = _data_bytes(dtype, shape)
    if len(raw) != header + expected:
        raise ValueError(
            f"expected {expected} data bytes for shape {shape}, "
            f"found {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _read_stream(f: _Reader, limit: int, limit_what: str) -> bytes:
    """Header, then exactly the declared data (one byte more to detect trailing data)."""
    head = f.read(4)
    if len(head) == 4 and head[:2] == b"\0\0":
        head += f.read(4 * head[3])
    dtype, shape, header = parse_header(head)
    expected = _data_bytes(dtype, shape)
    if expected > limit:
        raise ValueError(f"shape {shape} declares {expected} data bytes, more than {limit_what} ({limit})")
    body = f.read(expected + 1)
    if len(body) != expected:
        raise ValueError(f"expected {expected} data bytes for shape {shape}, "
                         f"found {'more' if len(body) > expected else len(body)}")
    return head + body


def read_idx(path: str | Path, max_bytes: int = MAX_DATA_BYTES) -> np.ndarray:
    """Read an IDX file (plain or gzip); :class:`DataError` naming the file if it is unusable."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
            f.seek(0)
            if gz:
                with gzip.GzipFile(fileobj=f) as g:
                    raw = _read_stream(g, max_bytes, "the limit on decompressed data")
            else:
                raw = _read_stream(f, min(max_bytes, p.stat().st_size), "the file holds")
        return parse_idx(raw)
    except ValueError as err:
        raise DataError(f"IDX file {str(p)!r}: {err}") from None
    except (OSError, EOFError, zlib.error) as err:
        what = "corrupt or truncated gzip data" if isinstance(err, (EOFError, zlib.error, gzip.BadGzipFile)) \
            else "cannot be read"
        raise DataError(f"IDX file {str(p)!r}: {what} ({getattr(err, 'strerror', None) or err})") from None


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
