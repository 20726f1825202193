"""Optional compiled kernels for the quantizers, and the threads that run them.

With numba installed (the ``sim`` and ``fast`` extras), DQSG, NDQSG, QSGD and the symbol
packer run compiled kernels (:mod:`fedsim.codecs._jit`) over disjoint ranges of the
tensor in a small thread pool; without it (the numpy-only edge install) they run their
numpy reference, chunk by chunk. Both give bit-identical payloads and decodes, so an edge
client without numba and a server with it interoperate (tests/test_kernels.py).

Threads: ``FEDSIM_CODEC_THREADS`` if set, else ``OMP_NUM_THREADS`` (Ray sets it to an
actor's CPUs, so a simulated client keeps to its one core), else the CPU count, capped
at 8; :func:`set_threads` changes it. Tensors under ``MIN_PARALLEL`` entries run in the
calling thread. ``FEDSIM_NO_JIT=1`` forces the numpy path.

The first call of each kernel compiles it (about a second); numba caches the machine
code beside the module (``__pycache__``) or, where that is read-only, in the user's cache
dir (``NUMBA_CACHE_DIR``, else ``~/.cache/numba``), so later processes only pay numba's
import (about half a second). Where neither is writable, or numba fails to import, the
numpy path runs (with a warning).
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import numpy as np

MIN_PARALLEL = 1 << 18  # entries: below this, thread hand-off costs more than it saves
MAX_THREADS = 8

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_threads: int | None = None
_jit: ModuleType | None = None
_jit_tried = False


def jit() -> ModuleType | None:
    """The compiled kernels module, or None (numba missing or ``FEDSIM_NO_JIT=1``)."""
    global _jit, _jit_tried
    if not _jit_tried:
        with _lock:
            if not _jit_tried:
                if os.environ.get("FEDSIM_NO_JIT", "") not in ("", "0"):
                    _jit = None
                else:
                    module: ModuleType | None
                    try:
                        from . import _jit as module
                    except ImportError:  # numba not installed: the numpy path
                        module = None
                    except Exception as err:  # noqa: BLE001 - numba present but unusable: the numpy path
                        # e.g. numba's "cannot cache function ...: no locator available" when
                        # neither the install dir nor the user's cache dir is writable; the
                        # numpy path gives the same bytes, so fall back instead of failing
                        warnings.warn(f"fedsim: compiled codec kernels unavailable ({err!r}); using numpy",
                                      RuntimeWarning, stacklevel=2)
                        module = None
                    _jit = module
                _jit_tried = True
    return _jit


def available() -> bool:
    """Whether the compiled kernels are in use."""
    return jit() is not None


def use_jit(enabled: bool) -> None:
    """Switch the compiled kernels off (``False``) or back on if numba is installed (tests, benchmarks)."""
    global _jit, _jit_tried
    with _lock:
        _jit, _jit_tried = None, False
    if not enabled:
        with _lock:
            _jit_tried = True


def _default_threads() -> int:
    for var in ("FEDSIM_CODEC_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return min(int(value), MAX_THREADS)
    return max(1, min(os.cpu_count() or 1, MAX_THREADS))


def threads() -> int:
    """Threads a large tensor is split over."""
    return _threads if _threads is not None else _default_threads()


def set_threads(n: int | None) -> None:
    """Use ``n`` threads (None: the default from the environment)."""
    global _threads, _pool
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"codec threads must be a positive int; got {n!r}")
    with _lock:
        _threads = None if n is None else min(n, MAX_THREADS)
        if _pool is not None:
            _pool.shutdown(wait=False)
            _pool = None


def _executor(n: int) -> ThreadPoolExecutor:
    # call with _lock held, and submit before releasing it: another thread's set_threads
    # (or a call wanting another size) shuts the old pool down, which then refuses new work
    global _pool
    if _pool is None or _pool._max_workers != n:  # noqa: SLF001 - size check only
        if _pool is not None:
            _pool.shutdown(wait=False)  # work already submitted still runs
        _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="fedsim-codec")
    return _pool


def ranges(total: int, align: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` (or fewer) consecutive ranges covering ``[0, total)``, cut at multiples of ``align``."""
    if total <= 0:
        return []
    step = -(-total // max(1, parts))
    step = max(align, -(-step // align) * align)
    return [(a, min(total, a + step)) for a in range(0, total, step)]


def parallel(kernel: Callable[..., Any], total: int, align: int, *args: Any, size: int | None = None) -> list[Any]:
    """``kernel(*args, a, b)`` over ranges of ``[0, total)`` in threads; the results in order.

    ``size`` (default ``total``) is the tensor size deciding whether threads are worth it.
    """
    n = threads() if (size if size is not None else total) >= MIN_PARALLEL else 1
    parts = ranges(total, align, n)
    if len(parts) <= 1:
        return [kernel(*args, a, b) for a, b in parts]
    with _lock:
        pool = _executor(n)
        futures = [pool.submit(kernel, *args, a, b) for a, b in parts[1:]]
    first = kernel(*args, *parts[0])  # the calling thread takes a share instead of waiting
    return [first, *(f.result() for f in futures)]


_local = threading.local()


def scratch(nbytes: int) -> np.ndarray:
    """A uint8 work buffer of ``nbytes`` owned by the calling thread, reused across calls.

    For the symbols between quantizer and packer: a fresh tensor-sized array costs its
    page faults and the kernel's zeroing of every page (~3 ms for 10 MB here), more than
    the packing itself. The buffer grows to the largest request and is kept (one byte per
    entry of the largest tensor, per thread that encodes or decodes). The contents are
    valid until the thread's next call: never return it to a caller.
    """
    buf = getattr(_local, "buf", None)
    if buf is None or buf.size < nbytes:
        buf = np.empty(max(int(nbytes), 1 << 16), dtype=np.uint8)
        _local.buf = buf
    return buf[:nbytes]
