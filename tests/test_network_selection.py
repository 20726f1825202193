"""Deadline and over-commitment: exactly the right clients are kept, the round ends when it should."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

# The three fixed profiles (tests/network_profiles.py). Arrivals: A at 12.1 s, B at 17.05 s, C at 5.26 s.
from network_profiles import THREE, WORK, three_clients  # noqa: E402  (three hand-timed profiles)

from fedsim.network import NetworkConfig, NetworkModel, num_to_sample, select_arrivals


def test_deadline_keeps_exactly_the_on_time_clients() -> None:
    # A arrives at 12.1, B at 17.05, C at 5.26 (test_network_timing)
    model, ids = three_clients(deadline_s=15.0)
    model.plan(1, [0, 1, 2])
    out = model.settle(1, {c: WORK for c in range(3)})
    assert out.kept == tuple(sorted([ids["A"], ids["C"]]))
    assert out.ids("missed_deadline") == (ids["B"],)
    assert out.duration_s == 15.0  # B has not arrived: the server waits until the deadline
    assert out.summary()["missed_deadline"] == 1 and out.summary()["kept"] == 2


def test_deadline_met_by_all_ends_at_last_arrival() -> None:
    model, _ = three_clients(deadline_s=20.0)
    model.plan(1, [0, 1, 2])
    out = model.settle(1, {c: WORK for c in range(3)})
    assert out.kept == (0, 1, 2) and out.duration_s == pytest.approx(17.05)


def test_arrival_exactly_at_deadline_is_on_time() -> None:
    sel = select_arrivals([5.0, 5.0 + 1e-9], [False, False], deadline_s=5.0, keep=None, idle_s=1)
    assert sel.status == ("kept", "missed_deadline") and sel.duration_s == 5.0


def test_overcommit_keeps_first_k_to_arrive() -> None:
    model, ids = three_clients(overcommit=0.5)
    assert model.num_to_sample(2, 3) == 3  # ceil(2 * 1.5)
    model.plan(1, [0, 1, 2], keep=2)
    out = model.settle(1, {c: WORK for c in range(3)})
    assert out.kept == tuple(sorted([ids["A"], ids["C"]]))
    assert out.ids("not_needed") == (ids["B"],)
    assert out.duration_s == pytest.approx(12.1)  # the 2nd arrival (A) closes the round


def test_overcommit_with_deadline_keeps_what_arrived_in_time() -> None:
    model, ids = three_clients(overcommit=0.5, deadline_s=10.0)
    model.plan(1, [0, 1, 2], keep=2)
    out = model.settle(1, {c: WORK for c in range(3)})
    assert out.kept == (ids["C"],)
    assert sorted(out.ids("missed_deadline")) == sorted([ids["A"], ids["B"]])
    assert out.duration_s == 10.0


def test_overcommit_requires_target() -> None:
    model, _ = three_clients(overcommit=0.3)
    with pytest.raises(ValueError, match="needs the target K"):
        model.plan(1, [0, 1, 2])


def test_num_to_sample() -> None:
    assert num_to_sample(10, 0.3, 100) == 13  # ceil(10 * 1.3), not 14 from 13.000000000000002
    assert num_to_sample(10, 0.0, 100) == 10
    assert num_to_sample(10, 0.3, 11) == 11
    assert num_to_sample(1, 0.01, 5) == 2
    with pytest.raises(ValueError, match=">= 1"):
        num_to_sample(0, 0.3, 10)


def test_ties_broken_by_client_id() -> None:
    sel = select_arrivals([3.0, 3.0, 1.0], [False] * 3, deadline_s=None, keep=2, idle_s=1,
                          order_key=[9, 4, 7])
    assert sel.status == ("not_needed", "kept", "kept") and sel.duration_s == 3.0


def test_mid_round_dropout_detected_when_it_happens() -> None:
    sel = select_arrivals([4.0, 9.0], [False, True], deadline_s=None, keep=None, idle_s=1)
    assert sel.status == ("kept", "dropped_mid") and sel.duration_s == 9.0
    sel = select_arrivals([4.0, 9.0], [False, True], deadline_s=6.0, keep=None, idle_s=1)
    assert sel.duration_s == 6.0


def test_empty_round_waits_deadline_or_idle() -> None:
    assert select_arrivals([], [], deadline_s=30.0, keep=None, idle_s=60.0).duration_s == 30.0
    assert select_arrivals([], [], deadline_s=None, keep=3, idle_s=60.0).duration_s == 60.0
    model = NetworkModel(NetworkConfig.model_validate(THREE), seed=0, num_clients=3)
    model.plan(1, [])
    out = model.settle(1, {})
    assert out.duration_s == 60.0 and out.kept == ()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 100, allow_nan=False), st.booleans()), max_size=30),
    st.one_of(st.none(), st.floats(0.1, 120)),
    st.one_of(st.none(), st.integers(1, 30)),
)
def test_selection_invariants(events: list[tuple[float, bool]], deadline: float | None,
                              keep: int | None) -> None:
    t = [e for e, _ in events]
    d = [b for _, b in events]
    sel = select_arrivals(t, d, deadline_s=deadline, keep=keep, idle_s=60.0)
    kept = [i for i, s in enumerate(sel.status) if s == "kept"]
    surplus = [i for i, s in enumerate(sel.status) if s == "not_needed"]
    if keep is not None:
        assert len(kept) <= keep
        if surplus:
            assert len(kept) == keep
    for i, s in enumerate(sel.status):
        assert (s == "dropped_mid") == d[i]
        if s in ("kept", "not_needed"):
            assert deadline is None or t[i] <= deadline
        if s == "missed_deadline":
            assert deadline is not None and t[i] > deadline
    # the first arrivals are kept: no surplus client arrived before a kept one
    assert all(t[k] <= t[s] for k in kept for s in surplus)
    # every kept update has arrived by the end of the round
    assert all(t[k] <= sel.duration_s for k in kept)
    if deadline is not None:
        assert sel.duration_s <= deadline
    if keep is None and deadline is None:
        assert kept == [i for i in range(len(t)) if not d[i]]
