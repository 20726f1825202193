"""Is a client available at virtual time t? Pure functions of the time and its pattern.

Two patterns besides "always":

- a daily window (a charging window, say): ``start_h`` and ``duration_h`` in hours, the
  client's own offset added; it may wrap past midnight;
- trace intervals: ``[start, end)`` in seconds, repeating every ``period_s`` when the
  trace gives a period (FedScale's ``finish_time``), absolute otherwise.

A client's availability is decided at the start of the round (as FedScale's
``isActive(cur_time)`` does); a client that goes offline mid-round is the
``dropout_mid`` of its profile.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["in_daily_window", "in_intervals", "SECONDS_PER_DAY"]

SECONDS_PER_DAY = 86400.0


def in_daily_window(
    t_s: float, start_h: np.ndarray | float, duration_h: float, offset_h: np.ndarray | float = 0.0
) -> np.ndarray:
    """Whether time ``t_s`` (seconds on the virtual clock) falls in each client's window.

    ``available  <=>  ((t / 3600 - start_h - offset_h) mod 24) < duration_h``
    (a 24 h window is always open).
    """
    hours = (t_s / 3600.0 - np.asarray(start_h, dtype=np.float64) - np.asarray(offset_h)) % 24.0
    return np.asarray((hours < duration_h) | (duration_h >= 24.0))


def in_intervals(t_s: float, intervals: Sequence[tuple[float, float]], period_s: float | None) -> bool:
    """Whether ``t_s`` lies in one of the sorted, disjoint ``[start, end)`` intervals.

    With a period, the intervals repeat: ``t`` is first reduced modulo ``period_s``.
    An empty list is never available.
    """
    if not intervals:
        return False
    t = t_s % period_s if period_s is not None else t_s
    starts = np.fromiter((a for a, _ in intervals), dtype=np.float64, count=len(intervals))
    i = int(np.searchsorted(starts, t, side="right")) - 1  # last interval starting <= t
    return i >= 0 and t < intervals[i][1]
