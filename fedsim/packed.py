"""A reply's payload as ONE array: what a client sends instead of one array per field.

Flower's ``ArrayRecord`` costs about 444 bytes per array on the wire (the NPY header, 128
bytes, plus the ``Array`` object and its reference in the record; measured with
``benchmarks/quantization.py --layouts``). A codec payload has one array per (tensor,
field): 12 for the small CNN, so a 1.7-bit NDQSG reply of that model was 41% overhead.
Packed, the whole payload is one ``uint8`` array (docs/wire-format.md, section 5)::

    b"FSP1" | u32 little-endian n | n bytes of UTF-8 JSON header | data

The header is a JSON list ``[[key, dtype, shape], ...]``: ``dtype`` is one of
:data:`DTYPES` (NumPy's ``dtype.str``, little-endian), ``shape`` a list of
non-negative ints. The data is every array's bytes in C order, back to back, in header
order, and must end exactly where the last array ends.

Nothing is unpickled or evaluated: the header is parsed with :func:`json.loads` under a
size cap, every field is type- and range-checked, and the arrays are read with
:func:`numpy.frombuffer`. Anything else is a :class:`~fedsim.codecs.base.PayloadError`
with a reason, never another exception (``tests/test_packed.py`` fuzzes it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import numpy as np

from fedsim.codecs.base import PayloadError

MAGIC = b"FSP1"
DTYPES = frozenset({"|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8"})
"""The dtypes a packed payload may hold (every codec's fields are among them)."""
MAX_HEADER = 1 << 20  # bytes of JSON header: ~25,000 entries
MAX_NDIM = 32  # numpy's own limit is 64


def pack(payload: Mapping[str, np.ndarray]) -> np.ndarray:
    """``{key: array}`` -> one ``uint8`` array (format in the module docstring).

    Raises ValueError for a dtype outside :data:`DTYPES` (after converting big-endian
    arrays to little-endian) or a non-string key.
    """
    entries, parts = [], []
    for key, value in payload.items():
        if not isinstance(key, str):
            raise ValueError(f"payload key {key!r} is not a string")
        arr = np.asarray(value)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        if arr.dtype.str not in DTYPES:
            raise ValueError(f"payload {key!r}: dtype {arr.dtype} cannot be packed (allowed: {sorted(DTYPES)})")
        entries.append([key, arr.dtype.str, [int(d) for d in arr.shape]])
        parts.append(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
    header = json.dumps(entries, separators=(",", ":")).encode()
    head = MAGIC + len(header).to_bytes(4, "little") + header
    out = np.empty(len(head) + sum(p.size for p in parts), np.uint8)  # one copy of the data
    out[:len(head)] = np.frombuffer(head, np.uint8)
    offset = len(head)
    for p in parts:
        out[offset:offset + p.size] = p
        offset += p.size
    return out


def _entry(item: object, i: int) -> tuple[str, np.dtype, tuple[int, ...]]:
    """One header entry, checked: (key, dtype, shape)."""
    if not (isinstance(item, list) and len(item) == 3):
        raise PayloadError(f"packed payload: header entry {i} is not [key, dtype, shape]")
    key, dtype, shape = item
    if not isinstance(key, str):
        raise PayloadError(f"packed payload: header entry {i} has a key that is not a string")
    if not (isinstance(dtype, str) and dtype in DTYPES):
        raise PayloadError(f"packed payload: {key!r} has dtype {dtype!r}; allowed: {sorted(DTYPES)}")
    if not (isinstance(shape, list) and len(shape) <= MAX_NDIM
            and all(type(d) is int and 0 <= d < 1 << 40 for d in shape)):
        raise PayloadError(f"packed payload: {key!r} has shape {shape!r}; expected up to {MAX_NDIM} "
                           "non-negative ints")
    return key, np.dtype(dtype), tuple(shape)


def unpack(buf: np.ndarray) -> dict[str, np.ndarray]:
    """One packed ``uint8`` array -> ``{key: array}``; PayloadError with a reason if malformed.

    The arrays returned are fresh, writable copies (none aliases ``buf``).
    """
    if not (isinstance(buf, np.ndarray) and buf.dtype == np.uint8 and buf.ndim == 1):
        raise PayloadError("packed payload: expected a 1-d uint8 array")
    raw = np.ascontiguousarray(buf)  # read in place: no copy of the data until each array's own
    if len(raw) < 8 or raw[:4].tobytes() != MAGIC:
        raise PayloadError(f"packed payload: does not start with {MAGIC!r}")
    n = int.from_bytes(raw[4:8].tobytes(), "little")
    if n > MAX_HEADER or 8 + n > len(raw):
        raise PayloadError(f"packed payload: header of {n} bytes in a payload of {len(raw)} "
                           f"(cap {MAX_HEADER})")
    try:
        entries = json.loads(raw[8:8 + n].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise PayloadError("packed payload: the header is not UTF-8 JSON") from None
    if not isinstance(entries, list):
        raise PayloadError("packed payload: the header is not a list")
    out: dict[str, np.ndarray] = {}
    offset = 8 + n
    for i, item in enumerate(entries):
        key, dtype, shape = _entry(item, i)
        if key in out:
            raise PayloadError(f"packed payload: key {key!r} appears twice")
        count = math.prod(shape)
        size = count * dtype.itemsize
        if size > len(raw) - offset:
            raise PayloadError(f"packed payload: {key!r} needs {size} bytes, {len(raw) - offset} are left")
        out[key] = np.frombuffer(raw, dtype, count, offset).reshape(shape).copy()
        offset += size
    if offset != len(raw):
        raise PayloadError(f"packed payload: {len(raw) - offset} bytes after the last array")
    return out
