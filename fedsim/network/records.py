"""What the network model reports: a client's work, its device, a round's plan and outcome.

Plain, immutable records (:class:`NetworkModel` in :mod:`fedsim.network.model` makes them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from .selection import Status
from .timing import ClientTiming


class ClientWork(NamedTuple):
    """What one started client did in a round (a plain 4- or 5-tuple is accepted).

    ``bytes_down``/``bytes_up``: real byte sizes of the message sent and the reply
    (the reply of a client that drops mid-round is never sent; its ``bytes_up`` is
    ignored). ``num_samples`` x ``epochs``: samples trained. ``flops_per_sample``:
    training FLOPs per sample, needed only for devices whose speed is in GFLOP/s.
    """

    bytes_down: int
    bytes_up: int
    num_samples: int
    epochs: float
    flops_per_sample: float | None = None


@dataclass(frozen=True)
class Device:
    """One client's device, drawn once from the seed (bandwidths in bits/s, times in s)."""

    client: int
    profile: str
    uplink_bps: float
    downlink_bps: float
    rtt_s: float
    compute_key: str  # "samples_per_s", "ms_per_sample" or "gflops"
    compute_value: float
    p_drop_before: float
    p_drop_mid: float
    jitter: float
    availability: str  # "always", "daily" or "trace"
    window_start_h: float | None = None
    window_duration_h: float | None = None
    window_offset_h: float | None = None
    intervals: tuple[tuple[float, float], ...] | None = None
    period_s: float | None = None


@dataclass(frozen=True)
class RoundPlan:
    """Decisions made when the server has sampled (before it sends anything).

    ``send_to``: the sampled clients that start (send each its message).
    ``dropped_before``: sampled clients that never start (send them nothing).
    ``drops_mid``: clients of ``send_to`` that will drop mid-round: they receive the
    message and compute, but nothing they send arrives (a simulator may skip running
    them; :meth:`NetworkModel.settle` still needs their download size and work).
    """

    round: int
    start_s: float
    sampled: tuple[int, ...]
    send_to: tuple[int, ...]
    dropped_before: tuple[int, ...]
    drops_mid: tuple[int, ...]
    keep: int | None


@dataclass(frozen=True)
class ClientOutcome:
    """One started client's round: its fate and, in seconds after the round start, when.

    ``event_s`` is the arrival time of its update, or for ``dropped_mid`` the time it
    dropped out. ``timing`` is the full leg-by-leg time it would have taken.
    """

    client: int
    profile: str
    status: Status
    event_s: float
    timing: ClientTiming
    bytes_down: int
    bytes_up: int

    @property
    def arrived(self) -> bool:
        """Its update reached the server (kept, late, or surplus under over-commitment)."""
        return self.status != "dropped_mid"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("timing"))
        d["total_s"] = self.timing.total_s
        return d


@dataclass(frozen=True)
class RoundOutcome:
    """Everything the server loop and the logs need about one settled round.

    ``kept``: the clients whose updates go to the strategy, sorted. ``failed``: clients
    that were sent a message but for which the caller passed no result (a real error
    of the simulation, not a modelled dropout). Times in seconds of simulated time.
    """

    round: int
    start_s: float
    duration_s: float
    end_s: float
    clients: tuple[ClientOutcome, ...]
    kept: tuple[int, ...]
    dropped_before: tuple[int, ...]
    failed: tuple[int, ...]
    num_sampled: int

    def ids(self, status: Status) -> tuple[int, ...]:
        """Clients with ``status``, sorted."""
        return tuple(c.client for c in self.clients if c.status == status)

    def summary(self) -> dict[str, float | int]:
        """The per-round line of the metrics log."""
        n = {s: 0 for s in ("kept", "dropped_mid", "missed_deadline", "not_needed")}
        for c in self.clients:
            n[c.status] += 1
        return {
            "round": self.round,
            "sim_round_s": self.duration_s,
            "sim_time_s": self.end_s,
            "sampled": self.num_sampled,
            "dropped_before": len(self.dropped_before),
            "started": len(self.clients),
            "dropped_mid": n["dropped_mid"],
            "missed_deadline": n["missed_deadline"],
            "not_needed": n["not_needed"],
            "kept": n["kept"],
            "failed": len(self.failed),
            "bytes_down": sum(c.bytes_down for c in self.clients),
            "bytes_up": sum(c.bytes_up for c in self.clients if c.arrived),
        }
