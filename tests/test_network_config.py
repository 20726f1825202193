"""Config validation: typed, frozen, unknown keys refused, every error says why."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from fedsim.network import BUILTIN_PROFILES, DeviceProfile, LogNormal, NetworkConfig, resolve_profiles

P = {"uplink_mbps": 5, "downlink_mbps": 10, "samples_per_s": 50}


def cfg(**kw: Any) -> NetworkConfig:
    return NetworkConfig.model_validate(kw)


def test_yaml_example_from_the_docs() -> None:
    text = """
    mix: {4g-phone: 0.6, wifi-phone: 0.3, night-phone: 0.1}
    deadline_s: 120
    overcommit: 0.3
    profiles:
      night-phone:
        base: 4g-phone
        availability: {kind: daily, start_h: 22, duration_h: 8,
                       offset_h: {kind: uniform, low: -2, high: 2}}
    """
    c = NetworkConfig.model_validate(yaml.safe_load(text))
    profs = resolve_profiles(c)
    assert profs["night-phone"].availability.kind == "daily"
    assert profs["night-phone"].uplink_mbps == BUILTIN_PROFILES["4g-phone"].uplink_mbps
    with pytest.raises(ValidationError, match="frozen"):
        c.deadline_s = 3  # type: ignore[misc]


def test_yaml_infinity_and_bare_numbers() -> None:
    c = NetworkConfig.model_validate(yaml.safe_load("""
    mix: {fast: 1}
    profiles: {fast: {uplink_mbps: .inf, downlink_mbps: .inf, samples_per_s: .inf}}
    """))
    assert resolve_profiles(c)["fast"].uplink_mbps.value == math.inf


def test_override_compute_unit_of_base() -> None:
    c = cfg(mix={"slow": 1.0}, profiles={"slow": {"base": "4g-phone", "ms_per_sample": 20}})
    p = resolve_profiles(c)["slow"]
    assert p.compute_key == "ms_per_sample" and p.gflops is None


def test_mix_is_normalised() -> None:
    assert sum(cfg(mix={"ideal": 0.3333, "4g-phone": 0.6667}).mix.values()) == pytest.approx(1.0)


def test_builtin_profiles_validate() -> None:
    ideal = BUILTIN_PROFILES["ideal"]
    assert ideal.uplink_mbps.value == math.inf and ideal.dropout_before.value == 0.0
    for name, p in BUILTIN_PROFILES.items():
        assert DeviceProfile.model_validate(p.model_dump()) == p, name


def test_lognormal_median_and_clip() -> None:
    d = LogNormal(kind="lognormal", median=10.0, sigma=0.5, high=20.0)
    x = d.sample(np.random.default_rng(0), 20000)
    assert np.median(x) == pytest.approx(10.0, rel=0.03) and x.max() <= 20.0


BAD: list[tuple[dict[str, Any], str]] = [
    ({"mix": {"ideal": 0.5}}, "mix fractions must sum to 1"),
    ({"mix": {"ideal": 1.0, "4g-phone": 0.0}}, "mix fractions must be > 0"),
    ({"mix": {}}, "at least one"),
    ({"mix": {"3g-phone": 1.0}}, r"unknown device profile '3g-phone'; known: .*4g-phone"),
    ({"mix": {"p": 1.0}, "profiles": {"p": {**P, "gflops": 3}}},
     "exactly one compute speed of samples_per_s, ms_per_sample, gflops"),
    ({"mix": {"p": 1.0}, "profiles": {"p": {"uplink_mbps": 5, "downlink_mbps": 10}}},
     "exactly one compute speed"),
    ({"mix": {"p": 1.0}, "profiles": {"p": {**P, "uplink_mbps": 0}}}, "uplink_mbps must be > 0"),
    ({"mix": {"p": 1.0}, "profiles": {"p": {**P, "dropout_mid": 1.5}}},
     r"dropout_mid must lie in \[0.0, 1.0\]"),
    ({"mix": {"p": 1.0}, "profiles": {"p": {
        **P, "dropout_before": {"kind": "lognormal", "median": 0.1, "sigma": 1}}}},
     "clip a lognormal"),
    ({"mix": {"p": 1.0}, "profiles": {"p": {**P, "rtt_ms": {"kind": "uniform", "low": -1, "high": 3}}}},
     r"rtt_ms must lie in"),
    ({"mix": {"p": 1.0}, "profiles": {"p": {**P, "rtt_ms": {"kind": "uniform", "low": 3, "high": 1}}}},
     "uniform needs low <= high"),
    ({"mix": {"p": 1.0}, "profiles": {"p": {**P, "rtt_ms": {"kind": "gaussian", "mean": 3}}}},
     "does not match any of the expected tags"),
    ({"mix": {"p": 1.0}, "profiles": {"p": {**P, "latency": 3}}}, "Extra inputs are not permitted"),
    ({"mix": {"4g-phone": 1.0}, "profiles": {"4g-phone": P}}, "already registered.*base"),
    ({"mix": {"p": 1.0}, "profiles": {"p": {"base": "6g-phone"}}}, r"profile 'p': unknown device profile '6g-phone'"),
    ({"mix": {"p": 1.0}, "profiles": {"p": {**P, "availability": {"kind": "trace"}}}},
     "take availability from traces, but no traces file"),
    ({"mix": {"p": 1.0}, "profiles": {"p": {**P, "availability": {
        "kind": "daily", "start_h": 25, "duration_h": 3}}}}, "start_h"),
    ({"deadline_s": -5}, "deadline_s"),
    ({"deadline_s": float("inf")}, "deadline_s"),
    ({"overcommit": -0.1}, "overcommit"),
    ({"round_interval_s": 0}, "round_interval_s"),
    ({"lantency": 3}, r"lantency\n  Extra inputs are not permitted"),
    ({"mix": {"p": 1.0}, "profiles": {"p": {**P, "jitter": -1}}}, "jitter"),
    ({"mix": {"p": 1.0}, "profiles": {"p": {**P, "uplink_mbps": {
        "kind": "lognormal", "median": 0, "sigma": 1}}}}, "median"),
]


@pytest.mark.parametrize(("data", "reason"), BAD)
def test_config_errors_say_why(data: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        NetworkConfig.model_validate(data)
