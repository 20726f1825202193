"""The pool's client-state store: LRU spill to .npz files and a bit-for-bit restore."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedsim.state import SpillStore, read_state, write_state

DTYPES = st.sampled_from(["<f4", ">f4", "<f8", "<f2", "<i8", ">i4", "|i1", "|u1", "<u2", "|b1", "<c8"])
ARRAYS = DTYPES.flatmap(lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0,
                                                                              max_side=5)))
KEYS = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
STATES = st.dictionaries(KEYS, st.dictionaries(KEYS, ARRAYS, min_size=1, max_size=3), min_size=1, max_size=2)


def same(a: dict, b: dict) -> bool:
    """Equal keys (in order), dtypes, shapes and bytes (NaN payloads included)."""
    if list(a) != list(b):
        return False
    for rec in a:
        if list(a[rec]) != list(b[rec]):
            return False
        for k in a[rec]:
            x, y = a[rec][k], b[rec][k]
            if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
                return False
    return True


@settings(max_examples=150, deadline=None)
@given(state=STATES)
def test_write_then_read_restores_every_array_bit_for_bit(tmp_path_factory, state):
    path = tmp_path_factory.mktemp("s") / "client-3.npz"
    write_state(path, state)
    assert same(read_state(path), state)


@settings(max_examples=60, deadline=None)
@given(states=st.lists(STATES, min_size=1, max_size=8), cap=st.integers(0, 400),
       order=st.randoms(use_true_random=False))
def test_spill_and_restore_round_trip_under_any_cap(tmp_path_factory, states, cap, order):
    """Whatever the cap and the order of reads, every client gets back exactly what it stored."""
    store = SpillStore(tmp_path_factory.mktemp("spill"), max_bytes=cap)
    for client, state in enumerate(states):
        store.put(client, state)
        # the memory held never exceeds the cap, except for the one client just stored
        last = sum(a.nbytes for r in state.values() for a in r.values())
        assert store.bytes_in_memory <= max(cap, last)
    clients = list(range(len(states)))
    order.shuffle(clients)
    for client in clients:
        assert client in store
        assert same(store.get(client), states[client])
    assert len(store) == len(states)


def test_least_recently_used_spills_first_and_files_are_removed_on_restore(tmp_path):
    one = {"fedsim.state": {"0.mem": np.arange(10, dtype=np.float32)}}  # 40 bytes each
    store = SpillStore(tmp_path, max_bytes=100)
    for c in (0, 1, 2):
        store.put(c, one)
    assert store.bytes_in_memory == 80 and store.spills == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["client-0.npz"]  # 0 was least recently used
    store.get(1)  # 1 is now the most recent: storing 3 spills 2
    store.put(3, one)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["client-0.npz", "client-2.npz"]
    assert same(store.get(0), one) and not (tmp_path / "client-0.npz").exists() and store.restores == 1
    store.put(0, {})  # an empty state drops the client, in memory and on disk
    assert 0 not in store and store.get(0) == {}
    assert store.clients() == [1, 2, 3]


def test_object_arrays_are_refused(tmp_path):
    with pytest.raises(TypeError, match="numeric"):
        SpillStore(tmp_path, 10).put(0, {"r": {"k": np.array([object()], dtype=object)}})


def test_export_writes_every_client_without_restoring_the_spilled(tmp_path):
    store = SpillStore(tmp_path / "spill", max_bytes=50)
    states = {c: {"fedsim.state": {"0.mem": np.full(10, c, dtype=np.float32)}} for c in range(4)}
    for c, st_ in states.items():
        store.put(c, st_)
    assert store.spills == 3
    assert store.export(tmp_path / "ckpt") == [0, 1, 2, 3]
    assert store.restores == 0 and store.bytes_in_memory == 40  # nothing came back into memory
    for c, st_ in states.items():
        assert same(read_state(tmp_path / "ckpt" / f"client-{c}.npz"), st_)
    assert same(store.get(0), states[0])  # restoring a spilled client leaves the exported file intact
    assert same(read_state(tmp_path / "ckpt" / "client-0.npz"), states[0])
