"""Who makes it into a round: deadline, over-commitment, mid-round dropouts.

Over-commitment is FedScale's (Lai et al., ICML 2022): sample ``ceil(K (1 + c))``
clients and aggregate the first K updates to arrive; the rest are not waited for.
The deadline is the round timeout of Bonawitz et al. ("Towards Federated Learning at
Scale: System Design", MLSys 2019, Sec. 2.2: devices that do not report in time are
ignored).

When the round ends, in simulated seconds after its start:

1. with a target K and at least K on-time arrivals: at the K-th arrival;
2. otherwise at the last event among the started clients (an arrival, or a mid-round
   dropout, which the server detects when it happens: the connection closes), capped
   at the deadline when there is one;
3. a round in which no client started lasts the deadline, or ``idle_s`` without one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["Selection", "Status", "num_to_sample", "select_arrivals"]

Status = Literal["kept", "dropped_mid", "missed_deadline", "not_needed"]


def num_to_sample(target: int, overcommit: float, available: int) -> int:
    """How many clients to sample for ``target`` updates: ``min(ceil(K (1 + c)), available)``."""
    if target < 1:
        raise ValueError(f"the target number of clients per round must be >= 1; got {target}")
    if overcommit < 0:
        raise ValueError(f"over-commitment c must be >= 0; got {overcommit}")
    # round before ceil so that K (1 + c) = 13.000000000000002 samples 13, not 14
    return min(math.ceil(round(target * (1.0 + overcommit), 9)), available)


@dataclass(frozen=True)
class Selection:
    """Outcome of :func:`select_arrivals`: a status per client and the round's length."""

    status: tuple[Status, ...]
    duration_s: float


def select_arrivals(
    event_s: Sequence[float],
    dropped: Sequence[bool],
    *,
    deadline_s: float | None,
    keep: int | None,
    idle_s: float,
    order_key: Sequence[int] | None = None,
) -> Selection:
    """Decide each started client's fate and the round's simulated duration.

    Parameters
    ----------
    event_s : sequence of float
        Per started client, seconds after the round start at which its update arrives,
        or (if ``dropped``) at which it drops out.
    dropped : sequence of bool
        Whether the client dropped mid-round (nothing arrives).
    deadline_s : float or None
        Updates arriving after it are ignored (an arrival exactly at it is on time).
    keep : int or None
        Target K: keep the first K on-time arrivals. ``None`` keeps every on-time one.
    idle_s : float
        Length of a round in which nobody started and there is no deadline.
    order_key : sequence of int, optional
        Tie-break between equal arrival times (client ids); defaults to position.
    """
    n = len(event_s)
    if len(dropped) != n:
        raise ValueError(f"{n} event times but {len(dropped)} dropout flags")
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be >= 1 (the target K); got {keep}")
    if deadline_s is not None and not deadline_s > 0:
        raise ValueError(f"the deadline must be > 0 s; got {deadline_s}")
    key = list(range(n)) if order_key is None else list(order_key)
    if n == 0:
        return Selection((), deadline_s if deadline_s is not None else idle_s)

    status: list[Status] = ["dropped_mid" if d else "kept" for d in dropped]
    arrivals = sorted((i for i in range(n) if not dropped[i]), key=lambda i: (event_s[i], key[i]))
    on_time = []
    for i in arrivals:
        if deadline_s is not None and event_s[i] > deadline_s:
            status[i] = "missed_deadline"
        else:
            on_time.append(i)
    if keep is not None:
        for i in on_time[keep:]:
            status[i] = "not_needed"
    if keep is not None and len(on_time) >= keep:
        duration = float(event_s[on_time[keep - 1]])  # the K-th arrival closes the round
    else:
        duration = float(max(event_s))
        if deadline_s is not None:
            duration = min(duration, deadline_s)
    return Selection(tuple(status), duration)
