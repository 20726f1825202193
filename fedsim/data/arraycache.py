"""Parsed datasets kept as ``.npy`` files and memory-mapped: parse once, share the pages.

A dataset parsed from slow sources (LEAF's JSON) is written once under
``cache_dir()/<name>-<digest>/`` as one ``.npy`` per array plus ``meta.json``; every later
load, in any process, memory-maps the arrays copy-on-write (``mmap_mode="c"``: pages are
shared until written, a write stays private and never reaches the file; torch takes them
without its read-only warning), so K workers on one machine share one copy in the page
cache instead of holding K. The digest covers each source file's
resolved path, size and modification time, and a format version: a changed file gives a
new entry. Nothing is pickled (``allow_pickle=False`` both ways). A cache that cannot be
read is rebuilt; one that cannot be written (read-only home) is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import cache_dir

FORMAT = 1
Built = tuple[dict[str, np.ndarray], dict[str, Any]]


def digest(sources: Sequence[Path], tag: str) -> str:
    """A short hash of (tag, format, each source's path, size and mtime)."""
    h = hashlib.sha256(f"{tag}|{FORMAT}".encode())
    for p in sources:
        st = p.stat()
        h.update(f"|{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _read(d: Path) -> Built:
    meta = json.loads((d / "meta.json").read_text())
    arrays = {k: np.load(d / f"{k}.npy", mmap_mode="c", allow_pickle=False) for k in meta["arrays"]}
    return arrays, meta["meta"]


def memmapped(name: str, sources: Sequence[Path], tag: str, build: Callable[[], Built]) -> Built:
    """``build()``'s arrays and metadata, from the cache when it holds them, memory-mapped."""
    d = cache_dir() / f"{name}-{digest(sources, tag)}"
    try:
        return _read(d)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    arrays, meta = build()
    tmp = d.with_name(f"{d.name}.{os.getpid()}.tmp")
    try:
        shutil.rmtree(d, ignore_errors=True)  # a damaged entry
        tmp.mkdir(parents=True, exist_ok=True)
        for k, a in arrays.items():
            np.save(tmp / f"{k}.npy", np.ascontiguousarray(a), allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps({"arrays": list(arrays), "meta": meta}))
        os.replace(tmp, d)
        return _read(d)
    except OSError:  # read-only cache, or another process won the race: use what we built
        shutil.rmtree(tmp, ignore_errors=True)
        return arrays, meta
