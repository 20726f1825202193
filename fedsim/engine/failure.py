"""The failure policy: when a run stops with an error instead of going on.

A bad reply is rejected and the round goes on (:mod:`fedsim.engine.wrapper`); but a run in
which most clients crash (a dead Ray worker, a broken data file on the nodes) or in which
round after round leaves the model unchanged (every reply rejected, the aggregate refused)
is not an experiment any more, and exiting 0 with its numbers would mislead. After every
round the server loop calls :meth:`FailurePolicy.after_round`, which raises
:class:`RunFailed` (a one-line reason naming the config key) when

- ``failure.max_failed_fraction`` (default 0.5): more than this fraction of the client-rounds
  sent so far *failed*: the client raised, its node died, or it never replied. Rejected
  replies (Byzantine or malformed: the defences working) and the network model's simulated
  drops do not count;
- ``failure.max_consecutive_bad_rounds`` (default 5): this many rounds in a row left the
  global model unchanged: no valid reply, or an aggregate that was not finite and refused.

``null`` switches either check off.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

FAILED_STATUSES = ("failed", "no-reply")  # statuses of clients.jsonl that count as failures
NOT_SENT = ("dropped-before",)  # the network model dropped it before any message was sent


class RunFailed(RuntimeError):
    """The run crossed a ``failure.*`` limit; the message says which and why."""


class _ClientEntry(Protocol):
    status: str


def count_failures(clients: Iterable[_ClientEntry]) -> tuple[int, int]:
    """(client-rounds sent, of which failed) among one round's client log entries."""
    sent = failed = 0
    for c in clients:
        if c.status in NOT_SENT:
            continue
        sent += 1
        failed += c.status in FAILED_STATUSES
    return sent, failed


@dataclass
class FailurePolicy:
    """Running counts of failed client-rounds and unchanged rounds, checked against the limits.

    Parameters
    ----------
    max_failed_fraction : float or None
        Stop when ``failed / sent`` over the run so far exceeds it.
    max_consecutive_bad_rounds : int or None
        Stop after this many consecutive rounds that did not update the model.
    """

    max_failed_fraction: float | None = 0.5
    max_consecutive_bad_rounds: int | None = 5
    sent: int = 0
    failed: int = 0
    bad_streak: int = 0

    @classmethod
    def from_config(cls, cfg: Any) -> FailurePolicy:
        """From a :class:`fedsim.config.FailureConfig`."""
        return cls(cfg.max_failed_fraction, cfg.max_consecutive_bad_rounds)

    def after_round(self, server_round: int, clients: Iterable[_ClientEntry], model_updated: bool) -> None:
        """Count one round; raise :class:`RunFailed` if a limit is crossed."""
        sent, failed = count_failures(clients)
        self.sent += sent
        self.failed += failed
        self.bad_streak = 0 if model_updated else self.bad_streak + 1
        limit = self.max_failed_fraction
        if limit is not None and self.sent and self.failed / self.sent > limit:
            raise RunFailed(
                f"run stopped after round {server_round}: {self.failed} of {self.sent} client-rounds failed "
                f"({100 * self.failed / self.sent:.0f}% > failure.max_failed_fraction = {100 * limit:.0f}%); "
                f"see the reasons in clients.jsonl")
        streak = self.max_consecutive_bad_rounds
        if streak is not None and self.bad_streak >= streak:
            raise RunFailed(
                f"run stopped after round {server_round}: the model was left unchanged {self.bad_streak} rounds "
                f"in a row (failure.max_consecutive_bad_rounds = {streak}): no valid reply or a non-finite "
                f"aggregate; see clients.jsonl and the model_refused column of metrics.jsonl")
