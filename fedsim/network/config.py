"""The user's view of the network model: typed, frozen, validated config.

Everything here is what a YAML ``network:`` section says; nothing is drawn or
computed. Units are in the field names and never change:

- bandwidth in **Mbit/s** (1 Mbit = 10**6 bits, as Ookla and Opensignal report it);
- round-trip latency in **milliseconds**;
- compute speed in training **samples/s**, **ms/sample**, or sustained training
  **GFLOP/s** (10**9 floating-point operations per second), exactly one of the three;
- probabilities per round in [0, 1]; times of day in hours; everything else in seconds.

Every numeric property of a device is a *distribution over the clients that have that
device*: it is drawn once per client from the run seed and stays fixed for the run.
A bare number means ``{kind: fixed, value: number}``.

Example (YAML)::

    network:
      mix: {4g-phone: 0.6, wifi-phone: 0.3, rpi-wifi: 0.1}
      deadline_s: 120
      overcommit: 0.3
      profiles:
        night-phone:
          base: 4g-phone
          availability: {kind: daily, start_h: 22, duration_h: 8,
                         offset_h: {kind: uniform, low: -2, high: 2}}
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "Always", "Availability", "DailyWindow", "DeviceProfile", "Distribution", "Fixed",
    "LogNormal", "NetworkConfig", "ProfileSpec", "TraceWindows", "Uniform", "support",
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


def _finite(name: str, v: float) -> float:
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number; got {v}")
    return v


# ---------------------------------------------------------------------------
# Distributions over clients


class Fixed(BaseModel):
    """Every client gets ``value`` (``inf`` allowed: infinite bandwidth or speed)."""

    model_config = _FROZEN
    kind: Literal["fixed"] = "fixed"
    value: float

    @field_validator("value")
    @classmethod
    def _not_nan(cls, v: float) -> float:
        if math.isnan(v):
            raise ValueError("fixed value must be a number; got nan")
        return v

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return np.full(size, self.value, dtype=np.float64)


class Uniform(BaseModel):
    """Uniform on [low, high]."""

    model_config = _FROZEN
    kind: Literal["uniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        _finite("uniform low", self.low)
        _finite("uniform high", self.high)
        if not self.low <= self.high:
            raise ValueError(f"uniform needs low <= high; got low={self.low}, high={self.high}")
        return self

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.uniform(self.low, self.high, size=size)


class LogNormal(BaseModel):
    """``median * exp(sigma * Z)``, Z standard normal, optionally clipped to [low, high].

    Parametrised by the median (not the mean) because measurement reports give medians
    and because the median is what a reader pictures: half the devices are slower.
    """

    model_config = _FROZEN
    kind: Literal["lognormal"]
    median: float = Field(gt=0)
    sigma: float = Field(ge=0)
    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _check(self) -> LogNormal:
        _finite("lognormal median", self.median)
        _finite("lognormal sigma", self.sigma)
        if self.low is not None and self.high is not None and not self.low <= self.high:
            raise ValueError(f"lognormal clip needs low <= high; got {self.low} > {self.high}")
        return self

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        # x = median * exp(sigma * z), z ~ N(0, 1)
        x = self.median * np.exp(self.sigma * rng.standard_normal(size))
        lo = -np.inf if self.low is None else self.low
        hi = np.inf if self.high is None else self.high
        return np.clip(x, lo, hi)


def _number_is_fixed(v: Any) -> Any:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return {"kind": "fixed", "value": v}
    return v


Distribution = Annotated[
    Fixed | Uniform | LogNormal,
    Field(discriminator="kind"),
    BeforeValidator(_number_is_fixed),
]


def support(dist: Fixed | Uniform | LogNormal) -> tuple[float, float]:
    """Smallest and largest value ``dist`` can produce (lognormal: (0, inf) unclipped)."""
    if isinstance(dist, Fixed):
        return dist.value, dist.value
    if isinstance(dist, Uniform):
        return dist.low, dist.high
    return (0.0 if dist.low is None else max(dist.low, 0.0)), (
        math.inf if dist.high is None else dist.high
    )


def _check_positive(name: str, dist: Fixed | Uniform | LogNormal) -> None:
    lo, _ = support(dist)
    if isinstance(dist, LogNormal) and dist.low is None:
        return  # lognormal is > 0 everywhere
    if not lo > 0:
        raise ValueError(f"{name} must be > 0 for every client; the distribution allows {lo}")


def _check_range(name: str, dist: Fixed | Uniform | LogNormal, lo: float, hi: float) -> None:
    dlo, dhi = support(dist)
    if dlo < lo or dhi > hi:
        extra = " (clip a lognormal with low/high)" if isinstance(dist, LogNormal) else ""
        raise ValueError(f"{name} must lie in [{lo}, {hi}]; the distribution spans [{dlo}, {dhi}]{extra}")


# ---------------------------------------------------------------------------
# Availability patterns


class Always(BaseModel):
    """Available at every round."""

    model_config = _FROZEN
    kind: Literal["always"] = "always"


class DailyWindow(BaseModel):
    """Available for ``duration_h`` hours a day from ``start_h`` (+ a per-client offset).

    The time of day of a round is its start on the virtual clock, modulo 24 h
    (see :attr:`NetworkConfig.start_time_s` and :attr:`NetworkConfig.round_interval_s`).
    A charging window 22:00-06:00 is ``start_h: 22, duration_h: 8``; ``offset_h`` spreads
    the clients' windows (time zones, habits) and is drawn once per client.
    """

    model_config = _FROZEN
    kind: Literal["daily"]
    start_h: float = Field(ge=0, lt=24)
    duration_h: float = Field(gt=0, le=24)
    offset_h: Distribution = Field(default_factory=lambda: Fixed(value=0.0))

    @model_validator(mode="after")
    def _offset(self) -> DailyWindow:
        lo, hi = support(self.offset_h)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("daily window offset_h must be bounded (clip a lognormal with low/high)")
        return self


class TraceWindows(BaseModel):
    """Available inside the active intervals of the client's trace record (``traces:``)."""

    model_config = _FROZEN
    kind: Literal["trace"]


Availability = Annotated[Always | DailyWindow | TraceWindows, Field(discriminator="kind")]


# ---------------------------------------------------------------------------
# Device profiles

_COMPUTE_KEYS = ("samples_per_s", "ms_per_sample", "gflops")


class DeviceProfile(BaseModel):
    """One kind of device: its link, its compute speed, how often it drops, when it is on.

    Parameters
    ----------
    uplink_mbps, downlink_mbps : Distribution
        Throughput of the link in Mbit/s (> 0; ``inf`` for an ideal link).
    rtt_ms : Distribution
        Round-trip latency in ms (>= 0), paid once per round (half on the way down,
        half on the way up).
    samples_per_s, ms_per_sample, gflops : Distribution
        Training speed, exactly one of them. ``gflops`` is sustained training GFLOP/s
        and needs the model's training FLOPs per sample from the caller.
    dropout_before : Distribution
        Per-round probability in [0, 1] that a sampled client never starts (the server
        learns it at once and sends it nothing).
    dropout_mid : Distribution
        Per-round probability in [0, 1] that a started client drops mid-round: its
        download and compute are spent, nothing arrives.
    jitter : float
        Per-round variation: each round, bandwidths, latency and compute speed are
        multiplied by independent ``exp(jitter * Z)`` factors, Z ~ N(0, 1). 0 = none.
    availability : Availability
        When the device can be sampled.
    description : str
        Free text for docs and logs.
    """

    model_config = _FROZEN
    uplink_mbps: Distribution
    downlink_mbps: Distribution
    rtt_ms: Distribution = Field(default_factory=lambda: Fixed(value=0.0))
    samples_per_s: Distribution | None = None
    ms_per_sample: Distribution | None = None
    gflops: Distribution | None = None
    dropout_before: Distribution = Field(default_factory=lambda: Fixed(value=0.0))
    dropout_mid: Distribution = Field(default_factory=lambda: Fixed(value=0.0))
    jitter: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    availability: Availability = Field(default_factory=Always)
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> DeviceProfile:
        _check_positive("uplink_mbps", self.uplink_mbps)
        _check_positive("downlink_mbps", self.downlink_mbps)
        _check_range("rtt_ms", self.rtt_ms, 0.0, math.inf)
        given = [k for k in _COMPUTE_KEYS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "a device profile needs exactly one compute speed of "
                f"{', '.join(_COMPUTE_KEYS)}; got {given or 'none'}"
            )
        _check_positive(given[0], getattr(self, given[0]))
        _check_range("dropout_before", self.dropout_before, 0.0, 1.0)
        _check_range("dropout_mid", self.dropout_mid, 0.0, 1.0)
        return self

    @property
    def compute_key(self) -> str:
        """Which of ``samples_per_s``, ``ms_per_sample``, ``gflops`` this profile uses."""
        return next(k for k in _COMPUTE_KEYS if getattr(self, k) is not None)


class ProfileSpec(BaseModel):
    """A user-defined profile: a full definition, or ``base`` plus the fields that differ.

    Fields are those of :class:`DeviceProfile`, all optional here; the resolved profile
    is validated as a :class:`DeviceProfile`. Setting one compute speed replaces the
    base's compute speed whatever its unit.
    """

    model_config = _FROZEN
    base: str | None = None
    uplink_mbps: Distribution | None = None
    downlink_mbps: Distribution | None = None
    rtt_ms: Distribution | None = None
    samples_per_s: Distribution | None = None
    ms_per_sample: Distribution | None = None
    gflops: Distribution | None = None
    dropout_before: Distribution | None = None
    dropout_mid: Distribution | None = None
    jitter: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    availability: Availability | None = None
    description: str | None = None


# ---------------------------------------------------------------------------
# The network section


class NetworkConfig(BaseModel):
    """The ``network:`` section of an experiment config.

    Parameters
    ----------
    mix : dict of str to float
        Device profile name -> fraction of the clients (fractions > 0, summing to 1
        within 0.001; they are then normalised).
        Names are user ``profiles`` or registered profiles (``fedsim.registry.PROFILES``).
        Clients are split in exactly these proportions (largest remainder), then the
        assignment is shuffled with the run seed.
    profiles : dict of str to ProfileSpec
        User-defined profiles (may not reuse a registered name).
    traces : str, optional
        Path of a per-client trace file (CSV or JSON, see :mod:`fedsim.network.traces`).
        Fields a trace record gives replace the profile's draws for that client.
    deadline_s : float, optional
        Round deadline in simulated seconds; ``None`` waits for every started client.
    overcommit : float
        Over-commitment factor c >= 0: sample ceil(K (1 + c)) clients and keep the
        first K to arrive (FedScale; Lai et al., ICML 2022).
    start_time_s : float
        Virtual clock at the start of round 1 (e.g. 72000 for 20:00 on day 0).
    round_interval_s : float, optional
        ``None``: rounds run back to back on the virtual clock. A number: round r is
        scheduled at ``start_time_s + (r - 1) * round_interval_s`` (or when round r-1
        ends, if later), like a server that opens a round every interval.
    idle_wait_s : float
        Simulated seconds a round lasts when no client runs in it (nobody available, or
        everyone dropped before training) and there is no deadline, so that
        availability windows can open.
    """

    model_config = _FROZEN
    mix: dict[str, float] = Field(default_factory=lambda: {"ideal": 1.0})
    profiles: dict[str, ProfileSpec] = Field(default_factory=dict)
    traces: str | None = None
    deadline_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    overcommit: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    start_time_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    round_interval_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    idle_wait_s: float = Field(default=60.0, gt=0, allow_inf_nan=False)

    @field_validator("mix")
    @classmethod
    def _mix(cls, mix: dict[str, float]) -> dict[str, float]:
        if not mix:
            raise ValueError("mix must name at least one device profile")
        bad = {k: v for k, v in mix.items() if not (math.isfinite(v) and v > 0)}
        if bad:
            raise ValueError(f"mix fractions must be > 0; got {bad}")
        total = sum(mix.values())
        if abs(total - 1.0) > 1e-3:
            raise ValueError(f"mix fractions must sum to 1; they sum to {total:g} ({mix})")
        return {k: v / total for k, v in mix.items()}  # 3 x 0.3333 -> exactly thirds

    @model_validator(mode="after")
    def _resolvable(self) -> NetworkConfig:
        from .profiles import resolve_profiles  # late: profiles imports this module

        resolve_profiles(self)  # raises ValueError with the reason
        return self
