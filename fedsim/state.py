"""Where a client's state lives between rounds (error-feedback memory, momentum, g_i).

Flower rebuilds a ClientApp for every message, so state must be stored outside it.
:class:`ContextStore` keeps it in Flower's per-node ``Context.state`` (persisted by
Flower across rounds, in simulation and in deployment): what every client task uses.
In the pool backend, one worker serves many clients and keeps their ``Context.state``
arrays in a :class:`SpillStore`, which bounds memory when thousands of simulated clients
each hold model-sized state by spilling the least recently used to ``.npz`` files (read
with ``allow_pickle=False``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, RecordDict

from fedsim.wire import from_record, to_record

STATE_KEY = "fedsim.state"


class ContextStore:
    """State in Flower's ``Context.state`` under ``fedsim.state``."""

    def __init__(self, context: Context) -> None:
        self.context = context

    def load(self) -> dict[str, np.ndarray]:
        rec = self.context.state.array_records.get(STATE_KEY)
        return {} if rec is None else from_record(rec, max_bytes=1 << 40)

    def save(self, state: dict[str, np.ndarray]) -> None:
        self.context.state[STATE_KEY] = to_record(state) if state else ArrayRecord()


ClientState = dict[str, dict[str, np.ndarray]]  # record key -> array key -> array


class SpillStore:
    """Many clients' state in memory up to a byte cap; the least recently used spill to disk.

    The worker-pool backend (:mod:`fedsim.engine.pool`) keeps here the ``Context.state``
    arrays of every client a worker owns: ``{record key: {array key: array}}``. While the
    arrays held in memory exceed ``max_bytes``, the least recently used client is written
    to ``<directory>/client-<id>.npz`` (numpy's format, no pickle: object arrays are
    refused) and dropped from memory; reading it back restores every array bit for bit
    (dtype, byte order, shape, NaN payloads) and deletes the file. The client most
    recently stored always stays in memory, so a single client larger than the cap works.
    """

    def __init__(self, directory: str | Path, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0; got {max_bytes}")
        from collections import OrderedDict

        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self._mem: OrderedDict[int, tuple[ClientState, int]] = OrderedDict()
        self._on_disk: set[int] = set()
        self.bytes_in_memory = 0
        self.spills = 0
        self.restores = 0

    def __contains__(self, client: int) -> bool:
        return client in self._mem or client in self._on_disk

    def __len__(self) -> int:
        return len(self._mem) + len(self._on_disk)

    def clients(self) -> list[int]:
        """Every client with state, in memory or on disk."""
        return sorted(set(self._mem) | self._on_disk)

    def get(self, client: int) -> ClientState:
        """The client's state ({} if it has none); a spilled client comes back into memory."""
        if client in self._mem:
            self._mem.move_to_end(client)
            return self._mem[client][0]
        if client not in self._on_disk:
            return {}
        state = read_state(self._path(client))
        self._path(client).unlink()
        self._on_disk.discard(client)
        self.restores += 1
        self._hold(client, state)
        return state

    def put(self, client: int, state: ClientState) -> None:
        """Keep ``state`` for ``client`` (an empty state drops the client)."""
        self.drop(client)
        if any(recs for recs in state.values()):
            for recs in state.values():
                for key, arr in recs.items():
                    if not isinstance(arr, np.ndarray) or arr.dtype.hasobject:
                        raise TypeError(f"client state {key!r}: only numeric numpy arrays can be stored")
            self._hold(client, {k: dict(v) for k, v in state.items()})

    def drop(self, client: int) -> None:
        if client in self._mem:
            self.bytes_in_memory -= self._mem.pop(client)[1]
        if client in self._on_disk:
            self._path(client).unlink(missing_ok=True)
            self._on_disk.discard(client)

    def export(self, directory: str | Path) -> list[int]:
        """Write every client's state as ``<directory>/client-<id>.npz`` without loading
        the spilled ones (their files are linked, or copied); return the clients."""
        import os
        import shutil

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for client, (state, _) in self._mem.items():
            write_state(directory / f"client-{client}.npz", state)
        for client in self._on_disk:
            dst = directory / f"client-{client}.npz"
            dst.unlink(missing_ok=True)
            try:
                os.link(self._path(client), dst)  # a spill file is never written again: share it
            except OSError:
                shutil.copyfile(self._path(client), dst)
        return self.clients()

    def clear(self) -> None:
        for client in list(self._mem) + list(self._on_disk):
            self.drop(client)

    def _hold(self, client: int, state: ClientState) -> None:
        size = sum(a.nbytes for recs in state.values() for a in recs.values())
        self._mem[client] = (state, size)
        self.bytes_in_memory += size
        while self.bytes_in_memory > self.max_bytes and len(self._mem) > 1:
            old, (old_state, old_size) = self._mem.popitem(last=False)
            write_state(self._path(old), old_state)
            self._on_disk.add(old)
            self.bytes_in_memory -= old_size
            self.spills += 1

    def _path(self, client: int) -> Path:
        return self.directory / f"client-{client}.npz"


def context_arrays(state: RecordDict) -> ClientState:
    """The non-empty ArrayRecords of a ``Context.state`` as numpy arrays (what a store keeps).

    Raises
    ------
    TypeError
        The state holds a MetricRecord or ConfigRecord: a store of client state keeps
        arrays only (every fedsim task keeps its state through :class:`ContextStore`).
    """
    if state.metric_records or state.config_records:
        raise TypeError("client state must be ArrayRecords only (found a MetricRecord or ConfigRecord "
                        "in Context.state)")
    return {key: {k: a.numpy() for k, a in rec.items()} for key, rec in state.array_records.items() if len(rec)}


def write_state(path: str | Path, state: ClientState) -> None:
    """One client's state as an ``.npz`` (arrays ``a0, a1, ...`` and their keys as JSON), atomically."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = [[rec, key] for rec, recs in state.items() for key in recs]
    arrays = {f"a{i}": state[rec][key] for i, (rec, key) in enumerate(keys)}
    tmp = path.with_name(path.stem + ".tmp.npz")
    with open(tmp, "wb") as f:
        np.savez(f, keys=np.array(json.dumps(keys)), allow_pickle=False, **arrays)
    tmp.replace(path)


def read_state(path: str | Path) -> ClientState:
    """The inverse of :func:`write_state` (``allow_pickle=False``)."""
    import json

    out: ClientState = {}
    with np.load(path, allow_pickle=False) as f:
        keys = json.loads(str(f["keys"]))
        for i, (rec, key) in enumerate(keys):
            out.setdefault(rec, {})[key] = f[f"a{i}"]
    return out
