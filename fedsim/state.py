"""Where a client's state lives between rounds (error-feedback memory, momentum, g_i).

Flower rebuilds a ClientApp for every message, so state must be stored outside it.
:class:`ContextStore` keeps it in Flower's per-node ``Context.state`` (persisted by
Flower across rounds, in simulation and in deployment). :class:`DiskStore` keeps one
``.npz`` per client in a directory, which bounds memory when thousands of simulated
clients each hold model-sized state. State is a flat ``dict`` of numpy arrays; files
are read with ``allow_pickle=False``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context

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


class DiskStore:
    """State in ``<directory>/client-<id>.npz``."""

    def __init__(self, directory: str | Path, client: int) -> None:
        self.path = Path(directory) / f"client-{client}.npz"

    def load(self) -> dict[str, np.ndarray]:
        if not self.path.exists():
            return {}
        with np.load(self.path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}

    def save(self, state: dict[str, np.ndarray]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, **state)
        tmp.replace(self.path)


ClientState = dict[str, dict[str, np.ndarray]]  # record key -> array key -> array


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
