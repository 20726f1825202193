"""The network model of a run: devices, availability, dropouts, arrivals, virtual clock.

:class:`NetworkModel` is built once from (config, seed, number of clients) and is a
deterministic state machine over rounds: the same seed and the same calls give the
same timeline, bit for bit. Its only state is the virtual clock (and the plan of the
round in progress); every random draw comes from a generator seeded by
``(seed, round, client, stream)``, so a client's draw never depends on who else was
sampled or on the order of calls.

Per round, the server loop calls, in this order:

1. :meth:`NetworkModel.available` before sampling: the clients it may sample;
2. :meth:`NetworkModel.plan` with the sampled clients: who drops before training
   (never started: the server sends them nothing) and who will drop mid-round;
3. :meth:`NetworkModel.settle` with what each started client transferred and
   computed: each one's arrival time or why it did not arrive, the clients whose
   updates the strategy may aggregate (``kept``), and the round's simulated time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any

import numpy as np

from .availability import in_daily_window, in_intervals
from .config import DeviceProfile, NetworkConfig
from .profiles import resolve_profiles
from .records import ClientOutcome, ClientWork, Device, RoundOutcome, RoundPlan
from .selection import num_to_sample, select_arrivals
from .timing import ClientTiming, client_time, samples_per_second
from .traces import TraceRecord, load_traces

__all__ = ["ClientOutcome", "ClientWork", "Device", "NetworkModel", "RoundOutcome", "RoundPlan",
           "assign_profiles", "client_rng"]

_MBIT = 1e6  # bits per Mbit (SI, as the measurement reports use)


def _stream_id(stream: str) -> int:
    return int.from_bytes(hashlib.blake2b(stream.encode(), digest_size=4).digest(), "little")


def client_rng(seed: int, round: int, client: int, stream: str) -> np.random.Generator:
    """The generator of one draw: seeded by (seed, round, client, stream) and nothing else."""
    key = [seed, round, client, _stream_id(stream)]
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]))


def assign_profiles(mix: Mapping[str, float], num_clients: int, seed: int) -> np.ndarray:
    """Profile index (into ``list(mix)``) of every client: exact proportions, seeded order.

    Counts are ``floor(f_p N)`` plus one for the profiles with the largest remainders
    (ties: mix order), so a 60/30/10 mix of 10 clients is exactly 6/3/1; the labels are
    then shuffled with a generator seeded from ``seed`` alone.
    """
    if num_clients < 1:
        raise ValueError(f"the network model needs at least one client; got {num_clients}")
    fracs = np.array(list(mix.values()), dtype=np.float64)
    quota = fracs * num_clients
    counts = np.floor(quota).astype(np.int64)
    short = num_clients - int(counts.sum())
    order = sorted(range(len(fracs)), key=lambda p: (-(quota[p] - counts[p]), p))
    for p in order[:short]:
        counts[p] += 1
    labels = np.repeat(np.arange(len(fracs)), counts)
    client_rng(seed, 0, 0, "assign-profiles").shuffle(labels)
    return labels


def _as_work(client: int, v: Any) -> ClientWork:
    w = v if isinstance(v, ClientWork) else ClientWork(*v)
    if w.bytes_down < 0 or w.bytes_up < 0 or w.num_samples < 0 or not w.epochs >= 0:
        raise ValueError(f"client {client}: bytes, samples and epochs must be >= 0; got {tuple(w)}")
    return w


class NetworkModel:
    """Devices, availability, dropouts, arrivals and the virtual clock of one run.

    Parameters
    ----------
    config : NetworkConfig
        The validated ``network:`` section.
    seed : int
        The run seed: profile assignment, per-client device draws and per-round draws
        all derive from it.
    num_clients : int
        Client ids are ``0 .. num_clients - 1``.
    traces : sequence of TraceRecord, optional
        Already-loaded traces; by default ``config.traces`` is loaded.
    """

    def __init__(
        self,
        config: NetworkConfig,
        seed: int,
        num_clients: int,
        traces: Iterable[TraceRecord] | None = None,
    ) -> None:
        self.config = config
        self.seed = int(seed)
        self.num_clients = int(num_clients)
        profiles = resolve_profiles(config)
        if traces is None and config.traces is not None:
            traces = load_traces(config.traces)
        self.traces = tuple(sorted(traces, key=lambda r: r.client)) if traces is not None else ()
        self.devices = self._draw_devices(profiles)
        self._clock = float(config.start_time_s)
        self._next_round: int | None = None
        self._plan: RoundPlan | None = None
        self._available: tuple[int, tuple[int, ...]] | None = None

    # -- devices -------------------------------------------------------------

    def _draw_devices(self, profiles: dict[str, DeviceProfile]) -> tuple[Device, ...]:
        names = list(self.config.mix)
        labels = assign_profiles(self.config.mix, self.num_clients, self.seed)
        n = self.num_clients
        draws = {k: np.zeros(n) for k in ("up", "down", "rtt", "speed", "pb", "pm", "off")}
        for p, name in enumerate(names):
            prof = profiles[name]
            idx = np.flatnonzero(labels == p)

            # called in this iteration only; p, name and the count are bound all the same
            def draw(dist: Any, what: str, p: int = p, name: str = name, size: int = idx.size) -> np.ndarray:
                return dist.sample(client_rng(self.seed, 0, p, f"device:{name}:{what}"), size)

            draws["up"][idx] = draw(prof.uplink_mbps, "uplink") * _MBIT
            draws["down"][idx] = draw(prof.downlink_mbps, "downlink") * _MBIT
            draws["rtt"][idx] = draw(prof.rtt_ms, "rtt") / 1000.0
            draws["speed"][idx] = draw(getattr(prof, prof.compute_key), "compute")
            draws["pb"][idx] = draw(prof.dropout_before, "dropout_before")
            draws["pm"][idx] = draw(prof.dropout_mid, "dropout_mid")
            if prof.availability.kind == "daily":
                draws["off"][idx] = draw(prof.availability.offset_h, "offset")
        devices = []
        for c in range(n):
            prof = profiles[names[labels[c]]]
            av = prof.availability
            dev = Device(
                client=c,
                profile=names[labels[c]],
                uplink_bps=float(draws["up"][c]),
                downlink_bps=float(draws["down"][c]),
                rtt_s=float(draws["rtt"][c]),
                compute_key=prof.compute_key,
                compute_value=float(draws["speed"][c]),
                p_drop_before=float(draws["pb"][c]),
                p_drop_mid=float(draws["pm"][c]),
                jitter=prof.jitter,
                availability=av.kind,
                window_start_h=av.start_h if av.kind == "daily" else None,
                window_duration_h=av.duration_h if av.kind == "daily" else None,
                window_offset_h=float(draws["off"][c]) if av.kind == "daily" else None,
            )
            if self.traces:
                dev = _apply_trace(dev, self.traces[c % len(self.traces)])
            devices.append(dev)
        return tuple(devices)

    def device(self, client: int) -> Device:
        """The device of ``client`` (fixed for the run)."""
        self._check_client(client)
        return self.devices[client]

    # -- clock ---------------------------------------------------------------

    @property
    def clock_s(self) -> float:
        """Cumulative simulated time: the end of the last settled round."""
        return self._clock

    def round_start(self, round: int) -> float:
        """Virtual time at which ``round`` starts (see ``NetworkConfig.round_interval_s``)."""
        interval = self.config.round_interval_s
        if interval is None:
            return self._clock
        scheduled = self.config.start_time_s + max(round - 1, 0) * interval
        return max(self._clock, scheduled)

    def _check_round(self, round: int, what: str) -> None:
        if self._next_round is not None and round != self._next_round:
            raise ValueError(
                f"{what}({round}): rounds run in order and round {self._next_round} is the "
                "current one (settle each round before starting the next)"
            )

    def _check_client(self, client: int) -> None:
        if not 0 <= client < self.num_clients:
            raise ValueError(f"client id {client} is not in [0, {self.num_clients})")

    # -- phase 1: before sampling ---------------------------------------------

    def available(self, round: int) -> list[int]:
        """Sorted ids of the clients that can be sampled in ``round``."""
        self._check_round(round, "available")
        if self._available is not None and self._available[0] == round:
            return list(self._available[1])
        t = self.round_start(round)
        out = []
        for d in self.devices:
            if d.intervals is not None:
                ok = in_intervals(t, d.intervals, d.period_s)
            elif d.availability == "daily":
                assert d.window_start_h is not None and d.window_duration_h is not None
                ok = bool(in_daily_window(t, d.window_start_h, d.window_duration_h,
                                          d.window_offset_h or 0.0))
            else:
                ok = True
            if ok:
                out.append(d.client)
        self._available = (round, tuple(out))
        self._next_round = round
        return out

    def num_to_sample(self, target: int, num_available: int) -> int:
        """Clients to sample for ``target`` updates: ``min(ceil(K (1 + c)), available)``."""
        return num_to_sample(target, self.config.overcommit, num_available)

    # -- phase 2: after sampling ---------------------------------------------

    def plan(self, round: int, sampled: Iterable[int], keep: int | None = None) -> RoundPlan:
        """Decide who drops before training and who will drop mid-round.

        Parameters
        ----------
        round : int
            The current round (the one :meth:`available` was asked about).
        sampled : iterable of int
            The clients the server sampled; each must be available this round.
        keep : int, optional
            The target K (the first K arrivals are kept). Required when
            ``overcommit > 0``; ``None`` keeps every on-time arrival.
        """
        self._check_round(round, "plan")
        if self._plan is not None and self._plan.round == round:
            raise ValueError(f"plan({round}) was already called; settle the round first")
        ids = sorted(int(c) for c in sampled)
        if len(set(ids)) != len(ids):
            raise ValueError(f"round {round}: a client was sampled twice ({ids})")
        avail = set(self.available(round))
        absent = [c for c in ids if c not in avail]
        if absent:
            raise ValueError(f"round {round}: sampled clients {absent} are not available")
        if self.config.overcommit > 0 and keep is None:
            raise ValueError(
                f"over-commitment c={self.config.overcommit} needs the target K: "
                "plan(round, sampled, keep=K)"
            )
        if keep is not None and keep < 1:
            raise ValueError(f"keep (the target K) must be >= 1; got {keep}")
        before, mid = [], []
        for c in ids:
            d = self.devices[c]
            # per-round Bernoulli draws, seeded by (seed, round, client, stream)
            if client_rng(self.seed, round, c, "dropout_before").random() < d.p_drop_before:
                before.append(c)
            elif client_rng(self.seed, round, c, "dropout_mid").random() < d.p_drop_mid:
                mid.append(c)
        plan = RoundPlan(
            round=round,
            start_s=self.round_start(round),
            sampled=tuple(ids),
            send_to=tuple(c for c in ids if c not in set(before)),
            dropped_before=tuple(before),
            drops_mid=tuple(mid),
            keep=keep,
        )
        self._plan = plan
        return plan

    # -- phase 3: after the replies --------------------------------------------

    def client_timing(self, round: int, client: int, work: ClientWork) -> ClientTiming:
        """Leg-by-leg time of ``client`` in ``round`` with this round's jitter."""
        d = self.devices[client]
        # per-round jitter: bandwidths, latency and speed times exp(jitter * z), z ~ N(0, 1)
        z = client_rng(self.seed, round, client, "jitter").standard_normal(4)
        f = np.exp(d.jitter * z)
        try:
            speed = samples_per_second(**{d.compute_key: d.compute_value},
                                       flops_per_sample=work.flops_per_sample)
        except ValueError as err:
            raise ValueError(f"client {client} (profile {d.profile!r}): {err}") from None
        return client_time(
            bytes_down=work.bytes_down,
            bytes_up=work.bytes_up,
            num_samples=work.num_samples,
            epochs=work.epochs,
            downlink_bps=d.downlink_bps * f[0],
            uplink_bps=d.uplink_bps * f[1],
            rtt_s=d.rtt_s * f[2],
            samples_per_s=speed * f[3],
        )

    def settle(self, round: int, ran: Mapping[int, ClientWork | tuple[Any, ...]]) -> RoundOutcome:
        """Arrival times, who is kept, the round's simulated time; advance the clock.

        Parameters
        ----------
        round : int
            The round :meth:`plan` was called for.
        ran : mapping of client id to ClientWork (or a 4/5-tuple)
            Every started client (``plan.send_to``) the caller has a result for:
            bytes down and up, samples, epochs. A client of ``send_to`` left out is
            reported in ``failed``; a client not in ``send_to`` is an error.

        Notes
        -----
        A client that drops mid-round drops at ``u * (rtt / 2 + download + compute)``,
        u ~ U(0, 1): after receiving some or all of the model and computing some of the
        update, before sending anything.
        """
        plan = self._plan
        if plan is None or plan.round != round:
            raise ValueError(f"settle({round}) needs plan({round}) first")
        send_to = set(plan.send_to)
        stray = sorted(set(ran) - send_to)
        if stray:
            why = [c for c in stray if c in set(plan.dropped_before)]
            raise ValueError(
                f"round {round}: results for clients {stray} that were not started"
                + (f" ({why} dropped before training)" if why else "")
            )
        mid = set(plan.drops_mid)
        ids = sorted(ran)
        timings, events, dropped = [], [], []
        works = {c: _as_work(c, ran[c]) for c in ids}
        for c in ids:
            t = self.client_timing(round, c, works[c])
            timings.append(t)
            if c in mid:
                u = client_rng(self.seed, round, c, "drop_point").random()
                # the reply is never sent: drop during latency-down, download or compute
                events.append(u * (t.latency_s / 2 + t.download_s + t.compute_s))
                dropped.append(True)
            else:
                events.append(t.total_s)
                dropped.append(False)
        keep = None if plan.keep is None else min(plan.keep, max(len(plan.sampled), 1))
        sel = select_arrivals(events, dropped, deadline_s=self.config.deadline_s, keep=keep,
                              idle_s=self.config.idle_wait_s, order_key=ids)
        clients = tuple(
            ClientOutcome(
                client=c,
                profile=self.devices[c].profile,
                status=s,
                event_s=float(e),
                timing=t,
                bytes_down=int(works[c].bytes_down),
                bytes_up=0 if s == "dropped_mid" else int(works[c].bytes_up),
            )
            for c, s, e, t in zip(ids, sel.status, events, timings)
        )
        out = RoundOutcome(
            round=round,
            start_s=plan.start_s,
            duration_s=sel.duration_s,
            end_s=plan.start_s + sel.duration_s,
            clients=clients,
            kept=tuple(c.client for c in clients if c.status == "kept"),
            dropped_before=plan.dropped_before,
            failed=tuple(sorted(send_to - set(ids))),
            num_sampled=len(plan.sampled),
        )
        self._clock = out.end_s
        self._plan = None
        self._available = None
        self._next_round = round + 1
        return out


def _apply_trace(dev: Device, rec: TraceRecord) -> Device:
    """``dev`` with the fields ``rec`` gives replaced (units converted)."""
    changes: dict[str, Any] = {}
    if rec.uplink_mbps is not None:
        changes["uplink_bps"] = rec.uplink_mbps * _MBIT
    if rec.downlink_mbps is not None:
        changes["downlink_bps"] = rec.downlink_mbps * _MBIT
    if rec.rtt_ms is not None:
        changes["rtt_s"] = rec.rtt_ms / 1000.0
    if rec.ms_per_sample is not None:
        changes["compute_key"] = "ms_per_sample"
        changes["compute_value"] = rec.ms_per_sample
    if rec.active is not None:
        changes["availability"] = "trace"
        changes["intervals"] = rec.active
        changes["period_s"] = rec.period_s
    return Device(**{**asdict(dev), **changes})
