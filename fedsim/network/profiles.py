"""Built-in device profiles, registered in :data:`fedsim.registry.PROFILES`.

Where each number comes from, and which ones are estimates, is in
``docs/network-model.md`` (section "Built-in profiles"); keep the two in step.
Means reported by measurement studies are used as medians of the lognormal spread
across devices; the spreads (``sigma``) and the jitter are estimates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedsim.registry import PROFILES, PluginError

from .config import DeviceProfile, ProfileSpec

if TYPE_CHECKING:
    from .config import NetworkConfig

__all__ = ["BUILTIN_PROFILES", "get_profile", "resolve_profiles"]

# Phones: dropout 2% before training + 4-8% mid-round = 6-10% per round in all
# (Bonawitz et al., MLSys 2019, report 6-10% of selected devices dropping out).
_PHONE_DROPS: dict[str, Any] = {
    "dropout_before": 0.02,
    "dropout_mid": {"kind": "uniform", "low": 0.04, "high": 0.08},
}

BUILTIN_PROFILES: dict[str, DeviceProfile] = {
    "ideal": DeviceProfile(
        uplink_mbps=float("inf"),
        downlink_mbps=float("inf"),
        rtt_ms=0.0,
        samples_per_s=float("inf"),
        description="zero latency, infinite bandwidth and speed, never drops: no network",
    ),
    "4g-phone": DeviceProfile.model_validate({
        "downlink_mbps": {"kind": "lognormal", "median": 17.0, "sigma": 0.7},
        "uplink_mbps": {"kind": "lognormal", "median": 6.0, "sigma": 0.7},
        "rtt_ms": {"kind": "lognormal", "median": 55.0, "sigma": 0.3},
        "gflops": {"kind": "lognormal", "median": 5.0, "sigma": 0.6},
        "jitter": 0.3,
        **_PHONE_DROPS,
        "description": "smartphone on LTE (Opensignal 2017-2019 global/US averages)",
    }),
    "5g-phone": DeviceProfile.model_validate({
        "downlink_mbps": {"kind": "lognormal", "median": 70.0, "sigma": 0.6},
        "uplink_mbps": {"kind": "lognormal", "median": 13.0, "sigma": 0.5},
        "rtt_ms": {"kind": "lognormal", "median": 35.0, "sigma": 0.3},
        "gflops": {"kind": "lognormal", "median": 10.0, "sigma": 0.5},
        "jitter": 0.3,
        **_PHONE_DROPS,
        "description": "smartphone on 5G (Opensignal US 5G Experience, Oct 2021)",
    }),
    "wifi-phone": DeviceProfile.model_validate({
        "downlink_mbps": {"kind": "lognormal", "median": 50.0, "sigma": 0.7},
        "uplink_mbps": {"kind": "lognormal", "median": 15.0, "sigma": 0.8},
        "rtt_ms": {"kind": "lognormal", "median": 25.0, "sigma": 0.4},
        "gflops": {"kind": "lognormal", "median": 5.0, "sigma": 0.6},
        "jitter": 0.2,
        **_PHONE_DROPS,
        "description": "smartphone on home Wi-Fi (estimate: see docs/network-model.md)",
    }),
    "rpi-wifi": DeviceProfile.model_validate({
        "downlink_mbps": {"kind": "lognormal", "median": 80.0, "sigma": 0.2},
        "uplink_mbps": {"kind": "lognormal", "median": 80.0, "sigma": 0.2},
        "rtt_ms": 5.0,
        "gflops": 2.0,
        "jitter": 0.1,
        "dropout_mid": 0.01,
        "description": "Raspberry Pi 4 on 802.11ac Wi-Fi, server on the same LAN (estimate)",
    }),
    "rpi-ethernet": DeviceProfile.model_validate({
        "downlink_mbps": 940.0,
        "uplink_mbps": 940.0,
        "rtt_ms": 0.5,
        "gflops": 2.0,
        "description": "Raspberry Pi 4 on Gigabit Ethernet, server on the same LAN",
    }),
}

for _name, _profile in BUILTIN_PROFILES.items():
    PROFILES.add(_name, _profile)


def get_profile(name: str) -> DeviceProfile:
    """A registered profile by name (built-in, entry point or ``"module:attr"``).

    A plugin may register a :class:`DeviceProfile` or a plain mapping of its fields.
    """
    obj = PROFILES.get(name)
    if isinstance(obj, DeviceProfile):
        return obj
    if isinstance(obj, Mapping):
        return DeviceProfile.model_validate(dict(obj))
    raise PluginError(f"device profile {name!r} is a {type(obj).__name__}, not a DeviceProfile")


def _merge(base: DeviceProfile, spec: ProfileSpec) -> dict[str, Any]:
    data = base.model_dump()
    changes = spec.model_dump(exclude_unset=True, exclude={"base"})
    if any(k in changes for k in ("samples_per_s", "ms_per_sample", "gflops")):
        for k in ("samples_per_s", "ms_per_sample", "gflops"):
            data.pop(k, None)
    data.update(changes)
    return data


def resolve_profiles(cfg: NetworkConfig) -> dict[str, DeviceProfile]:
    """The profiles ``cfg.mix`` names, resolved and validated.

    Raises
    ------
    ValueError
        A user profile reuses a registered name, names an unknown base, is incomplete,
        or the mix names an unknown profile; the message says which and lists the
        known names.
    """
    user: dict[str, DeviceProfile] = {}
    registered = set(PROFILES.names())
    for name, spec in cfg.profiles.items():
        if name in registered:
            raise ValueError(
                f"profile {name!r} is already registered; define it under a new name "
                f"with base: {name!r} to change it"
            )
        if spec.base is None:
            data = spec.model_dump(exclude_unset=True, exclude={"base"})
        else:
            if spec.base in cfg.profiles:
                raise ValueError(f"profile {name!r}: base must be a registered profile, not "
                                 f"another user profile ({spec.base!r})")
            try:
                base = get_profile(spec.base)
            except PluginError as err:
                raise ValueError(f"profile {name!r}: {err}") from None
            data = _merge(base, spec)
        try:
            user[name] = DeviceProfile.model_validate(data)
        except ValueError as err:
            raise ValueError(f"profile {name!r}: {err}") from None
    out: dict[str, DeviceProfile] = {}
    for name in cfg.mix:
        if name in user:
            out[name] = user[name]
            continue
        try:
            out[name] = get_profile(name)
        except PluginError:
            known = sorted(registered | set(user))
            raise ValueError(
                f"mix names unknown device profile {name!r}; known: {', '.join(known)}"
            ) from None
    needs_trace = [n for n, p in out.items() if p.availability.kind == "trace"]
    if needs_trace and cfg.traces is None:
        raise ValueError(
            f"profiles {needs_trace} take availability from traces, but no traces file is set"
        )
    return out
