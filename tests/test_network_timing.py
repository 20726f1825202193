"""Hand-computed client times: three clients with fixed profiles, every leg by hand."""

from __future__ import annotations

import math

import pytest

# the profiles, by hand: see tests/network_profiles.py
from network_profiles import WORK, three_clients  # noqa: E402  (three hand-timed profiles)

from fedsim.network import client_time
from fedsim.network.timing import samples_per_second, training_flops_per_sample, transfer_seconds

# A: 0.1 + 8*2e6/16e6 + 1000/100 + 8*1e6/8e6 = 0.1 + 1 + 10 + 1 = 12.1
# B: 0.05 + 8*2e6/4e6 + 1000/200 + 8*1e6/1e6 = 0.05 + 4 + 5 + 8 = 17.05
# C: 0.02 + 8*2e6/1e8 + 1000/200 + 8*1e6/1e8 = 0.02 + 0.16 + 5 + 0.08 = 5.26
EXPECTED = {"A": (0.1, 1.0, 10.0, 1.0, 12.1), "B": (0.05, 4.0, 5.0, 8.0, 17.05),
            "C": (0.02, 0.16, 5.0, 0.08, 5.26)}



def test_transfer_is_bytes_times_eight_over_bits_per_second() -> None:
    assert transfer_seconds(1_000_000, 8e6) == 1.0
    assert transfer_seconds(125, 1000.0) == 1.0
    assert transfer_seconds(10**9, math.inf) == 0.0
    with pytest.raises(ValueError, match="> 0 bits/s"):
        transfer_seconds(1, 0.0)


def test_compute_speed_units() -> None:
    assert samples_per_second(samples_per_s=50.0) == 50.0
    assert samples_per_second(ms_per_sample=4.0) == 250.0
    assert samples_per_second(gflops=3.0, flops_per_sample=1.5e7) == 200.0
    assert training_flops_per_sample(1e6) == 3e6
    with pytest.raises(ValueError, match="training FLOPs per"):
        samples_per_second(gflops=3.0)
    with pytest.raises(ValueError, match="exactly one"):
        samples_per_second(samples_per_s=1.0, ms_per_sample=1.0)


def test_pure_function_legs() -> None:
    t = client_time(bytes_down=2_000_000, bytes_up=1_000_000, num_samples=500, epochs=2,
                    downlink_bps=16e6, uplink_bps=8e6, rtt_s=0.1, samples_per_s=100.0)
    assert (t.latency_s, t.download_s, t.compute_s, t.upload_s) == (0.1, 1.0, 10.0, 1.0)
    assert t.total_s == pytest.approx(12.1, abs=1e-12)


def test_three_clients_hand_computed() -> None:
    model, ids = three_clients()
    plan = model.plan(1, [0, 1, 2])
    assert plan.send_to == (0, 1, 2) and plan.dropped_before == () and plan.drops_mid == ()
    out = model.settle(1, {c: WORK for c in range(3)})
    for name, (lat, down, comp, up, total) in EXPECTED.items():
        c = next(o for o in out.clients if o.client == ids[name])
        assert c.status == "kept"
        assert c.timing.latency_s == pytest.approx(lat, abs=1e-12)
        assert c.timing.download_s == pytest.approx(down, abs=1e-12)
        assert c.timing.compute_s == pytest.approx(comp, abs=1e-12)
        assert c.timing.upload_s == pytest.approx(up, abs=1e-12)
        assert c.event_s == pytest.approx(total, abs=1e-12)
    # no deadline: the round waits for the slowest (B)
    assert out.duration_s == pytest.approx(17.05, abs=1e-12)
    assert out.end_s == pytest.approx(17.05, abs=1e-12) and model.clock_s == out.end_s
    assert out.kept == (0, 1, 2)


def test_plain_tuples_are_accepted_and_clock_accumulates() -> None:
    model, _ = three_clients()
    model.plan(1, [0, 1, 2])
    model.settle(1, {c: tuple(WORK) for c in range(3)})
    model.plan(2, [0, 1, 2])
    out = model.settle(2, {c: WORK for c in range(3)})
    assert out.start_s == pytest.approx(17.05) and out.end_s == pytest.approx(34.1)


def test_gflops_profile_without_flops_is_a_clear_error() -> None:
    model, ids = three_clients()
    model.plan(1, [0, 1, 2])
    with pytest.raises(ValueError, match=rf"client {ids['C']} \(profile 'C'\).*FLOPs per sample"):
        model.settle(1, {c: WORK._replace(flops_per_sample=None) for c in range(3)})
