"""NetworkModel: seeded determinism, dropout rates, the ideal profile, availability, assignment."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedsim.network import ClientWork, NetworkConfig, NetworkModel, TraceRecord
from fedsim.network.availability import in_daily_window, in_intervals
from fedsim.network.model import assign_profiles
from fedsim.registry import PROFILES

MIX = {"mix": {"4g-phone": 0.6, "wifi-phone": 0.3, "rpi-wifi": 0.1}}
WORK = ClientWork(bytes_down=400_000, bytes_up=400_000, num_samples=200, epochs=1,
                  flops_per_sample=3e6)


def run(cfg: NetworkConfig, seed: int, rounds: int = 8, n: int = 40, k: int = 8) -> list[object]:
    """A toy server loop: available -> sample (seeded) -> plan -> settle."""
    model = NetworkModel(cfg, seed=seed, num_clients=n)
    outcomes = []
    for r in range(1, rounds + 1):
        avail = model.available(r)
        m = model.num_to_sample(k, len(avail))
        sampled = np.random.default_rng([seed, r]).choice(avail, size=m, replace=False)
        plan = model.plan(r, sampled.tolist(), keep=k)
        outcomes.append((plan, model.settle(r, {c: WORK for c in plan.send_to})))
    return outcomes


def test_builtin_profiles_registered() -> None:
    for name in ("ideal", "4g-phone", "5g-phone", "wifi-phone", "rpi-wifi", "rpi-ethernet"):
        assert name in PROFILES.names()


def test_same_seed_same_timeline() -> None:
    cfg = NetworkConfig.model_validate({**MIX, "deadline_s": 30, "overcommit": 0.25})
    a, b = run(cfg, seed=3), run(cfg, seed=3)
    assert a == b  # frozen dataclasses compare field by field, floats exactly


def test_different_seed_differs() -> None:
    cfg = NetworkConfig.model_validate(MIX)
    a, b = run(cfg, seed=3), run(cfg, seed=4)
    assert [o.end_s for _, o in a] != [o.end_s for _, o in b]
    ma, mb = NetworkModel(cfg, 3, 40), NetworkModel(cfg, 4, 40)
    assert [d.profile for d in ma.devices] != [d.profile for d in mb.devices]


def test_draws_do_not_depend_on_who_else_was_sampled() -> None:
    cfg = NetworkConfig.model_validate({"mix": {"p": 1.0}, "profiles": {"p": {
        "uplink_mbps": 5, "downlink_mbps": 5, "samples_per_s": 100,
        "dropout_before": 0.5, "dropout_mid": 0.5, "jitter": 0.5}}})
    big, small = NetworkModel(cfg, 11, 30), NetworkModel(cfg, 11, 30)
    pb = big.plan(1, range(30))
    ps = small.plan(1, [5, 17])
    assert (5 in pb.dropped_before, 17 in pb.dropped_before) == (
        5 in ps.dropped_before, 17 in ps.dropped_before)
    ob = big.settle(1, {c: WORK for c in pb.send_to})
    os_ = small.settle(1, {c: WORK for c in ps.send_to})
    for c in os_.clients:
        twin = next(o for o in ob.clients if o.client == c.client)
        assert (twin.status == "dropped_mid") == (c.status == "dropped_mid")
        assert twin.timing == c.timing


@pytest.mark.parametrize(("before", "mid"), [(0.3, 0.0), (0.1, 0.25), (0.0, 0.6)])
def test_dropout_rates_converge(before: float, mid: float) -> None:
    cfg = NetworkConfig.model_validate({"mix": {"p": 1.0}, "profiles": {"p": {
        "uplink_mbps": 5, "downlink_mbps": 5, "samples_per_s": 100,
        "dropout_before": before, "dropout_mid": mid}}})
    n, rounds = 100, 60  # 6000 Bernoulli draws: 4 sigma <= 4 * sqrt(.25 / 6000) = 0.026
    model = NetworkModel(cfg, seed=5, num_clients=n)
    n_before = n_started = n_mid = 0
    for r in range(1, rounds + 1):
        plan = model.plan(r, range(n))
        out = model.settle(r, {c: WORK for c in plan.send_to})
        n_before += len(plan.dropped_before)
        n_started += len(plan.send_to)
        n_mid += len(out.ids("dropped_mid"))
        assert set(out.ids("dropped_mid")) == set(plan.drops_mid)
        assert not set(out.kept) & set(plan.drops_mid)
    assert n_before / (n * rounds) == pytest.approx(before, abs=0.026)
    assert n_mid / n_started == pytest.approx(mid, abs=0.03)


def test_dropped_mid_spent_compute_but_sent_nothing() -> None:
    cfg = NetworkConfig.model_validate({"mix": {"p": 1.0}, "profiles": {"p": {
        "uplink_mbps": 8, "downlink_mbps": 8, "samples_per_s": 100, "dropout_mid": 1.0}}})
    model = NetworkModel(cfg, seed=0, num_clients=4)
    plan = model.plan(1, range(4))
    assert plan.drops_mid == (0, 1, 2, 3)
    out = model.settle(1, {c: WORK for c in plan.send_to})
    assert out.kept == () and out.summary()["bytes_up"] == 0
    for c in out.clients:
        assert c.status == "dropped_mid" and not c.arrived and c.bytes_up == 0
        assert 0 <= c.event_s <= c.timing.latency_s / 2 + c.timing.download_s + c.timing.compute_s


def test_ideal_profile_zero_time_no_drops() -> None:
    model = NetworkModel(NetworkConfig(), seed=1, num_clients=20)
    for r in range(1, 6):
        assert model.available(r) == list(range(20))
        plan = model.plan(r, range(20))
        assert plan.dropped_before == () and plan.drops_mid == ()
        big = ClientWork(10**9, 10**9, 10**6, 5)
        out = model.settle(r, {c: big for c in plan.send_to})
        assert out.kept == tuple(range(20))
        assert out.duration_s == 0.0 and all(c.event_s == 0.0 for c in out.clients)
    assert model.clock_s == 0.0


def test_assignment_exact_proportions_and_seeded() -> None:
    labels = assign_profiles({"a": 0.6, "b": 0.3, "c": 0.1}, 10, seed=0)
    assert np.bincount(labels).tolist() == [6, 3, 1]
    labels = assign_profiles({"a": 0.5, "b": 0.25, "c": 0.25}, 7, seed=0)
    # quotas 3.5/1.75/1.75: floors 3/1/1, the 2 left go to the largest remainders (.75, .75)
    assert np.bincount(labels).tolist() == [3, 2, 2]
    assert np.array_equal(assign_profiles({"a": .5, "b": .5}, 50, 9),
                          assign_profiles({"a": .5, "b": .5}, 50, 9))


def test_devices_fixed_across_rounds() -> None:
    model = NetworkModel(NetworkConfig.model_validate(MIX), seed=2, num_clients=30)
    before = model.devices
    for r in range(1, 4):
        plan = model.plan(r, model.available(r)[:10])
        model.settle(r, {c: WORK for c in plan.send_to})
    assert model.devices == before


def test_daily_charging_window() -> None:
    # window 22:00-06:00, rounds every 30 min from 21:00
    cfg = NetworkConfig.model_validate({
        "mix": {"night": 1.0},
        "profiles": {"night": {"base": "ideal",
                               "availability": {"kind": "daily", "start_h": 22, "duration_h": 8}}},
        "start_time_s": 21 * 3600, "round_interval_s": 1800})
    model = NetworkModel(cfg, seed=0, num_clients=5)
    seen = []
    for r in range(1, 21):
        avail = model.available(r)
        seen.append((model.round_start(r) / 3600 % 24, len(avail)))
        plan = model.plan(r, avail)
        model.settle(r, {c: WORK for c in plan.send_to})
    hours_on = [h for h, n in seen if n == 5]
    hours_off = [h for h, n in seen if n == 0]
    assert len(hours_on) + len(hours_off) == 20
    assert hours_on == [22.0, 22.5, 23.0, 23.5] + [x / 2 for x in range(0, 12)]
    assert hours_off == [21.0, 21.5, 6.0, 6.5]


def test_daily_window_with_client_offsets() -> None:
    cfg = NetworkConfig.model_validate({
        "mix": {"night": 1.0},
        "profiles": {"night": {"base": "ideal", "availability": {
            "kind": "daily", "start_h": 22, "duration_h": 8,
            "offset_h": {"kind": "uniform", "low": -3, "high": 3}}}},
        "start_time_s": 20 * 3600})
    model = NetworkModel(cfg, seed=4, num_clients=200)
    offs = np.array([d.window_offset_h for d in model.devices])
    assert offs.min() >= -3 and offs.max() <= 3 and offs.std() > 1
    expected = [c for c in range(200) if (20 - 22 - offs[c]) % 24 < 8]
    assert model.available(1) == expected and 0 < len(expected) < 200


def test_window_formula() -> None:
    assert in_daily_window(23 * 3600, 22, 8).item()
    assert in_daily_window(5.99 * 3600, 22, 8).item()
    assert not in_daily_window(6 * 3600, 22, 8).item()
    assert not in_daily_window(21.99 * 3600, 22, 8).item()
    assert in_daily_window(10 * 3600 + 86400 * 3, 9, 2).item()
    assert in_daily_window(123.0, 5, 24).item()


def test_trace_intervals_availability_and_values() -> None:
    traces = [
        TraceRecord(client=0, ms_per_sample=10.0, uplink_mbps=2.0, downlink_mbps=4.0,
                    period_s=100.0, active=((0.0, 10.0), (50.0, 60.0))),
        TraceRecord(client=1),  # no fields: keeps its profile's draws, always available
    ]
    cfg = NetworkConfig.model_validate({"mix": {"ideal": 1.0}, "round_interval_s": 5.0})
    model = NetworkModel(cfg, seed=0, num_clients=4, traces=traces)
    d0, d2 = model.device(0), model.device(2)  # client 2 takes record 0 (2 mod 2)
    assert d0.uplink_bps == 2e6 and d0.downlink_bps == 4e6
    assert d0.compute_key == "ms_per_sample" and d0.compute_value == 10.0
    assert d2.intervals == d0.intervals and model.device(1).uplink_bps == math.inf
    on = []
    for r in range(1, 25):
        avail = model.available(r)
        if 0 in avail:
            on.append(model.round_start(r))
        plan = model.plan(r, avail)
        model.settle(r, {c: WORK for c in plan.send_to})
    assert on == [0.0, 5.0, 50.0, 55.0, 100.0, 105.0]


def test_interval_formula() -> None:
    iv = ((0.0, 10.0), (50.0, 60.0))
    assert in_intervals(0.0, iv, 100.0) and not in_intervals(10.0, iv, 100.0)
    assert in_intervals(155.0, iv, 100.0) and not in_intervals(155.0, iv, None)
    assert not in_intervals(1.0, (), None)


def test_round_protocol_errors() -> None:
    model = NetworkModel(NetworkConfig.model_validate(MIX), seed=0, num_clients=10)
    with pytest.raises(ValueError, match="needs plan"):
        model.settle(1, {})
    plan = model.plan(1, [0, 1, 2])
    with pytest.raises(ValueError, match="already called"):
        model.plan(1, [0])
    with pytest.raises(ValueError, match="rounds run in order"):
        model.available(2)
    with pytest.raises(ValueError, match=r"not started"):
        model.settle(1, {9: WORK})
    out = model.settle(1, {c: WORK for c in plan.send_to[1:]})
    assert out.failed == plan.send_to[:1]
    with pytest.raises(ValueError, match="sampled twice"):
        model.plan(2, [3, 3])
    with pytest.raises(ValueError, match="not in"):
        model.device(10)


def test_unavailable_client_cannot_be_sampled() -> None:
    cfg = NetworkConfig.model_validate({
        "mix": {"night": 1.0},
        "profiles": {"night": {"base": "ideal",
                               "availability": {"kind": "daily", "start_h": 22, "duration_h": 1}}}})
    model = NetworkModel(cfg, seed=0, num_clients=3)
    assert model.available(1) == []
    with pytest.raises(ValueError, match=r"\[0\] are not available"):
        model.plan(1, [0])


def test_round_logs_are_plain_data() -> None:
    _, out = run(NetworkConfig.model_validate({**MIX, "deadline_s": 10}), seed=1, rounds=1)[0]
    s = out.summary()
    assert s["sampled"] == s["dropped_before"] + s["started"]
    assert s["started"] == s["kept"] + s["dropped_mid"] + s["missed_deadline"] + s["not_needed"]
    row = out.clients[0].to_dict()
    assert {"client", "profile", "status", "event_s", "total_s", "bytes_up"} <= set(row)
