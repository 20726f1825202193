"""One round's counts and per-client rows (``metrics.jsonl`` / ``clients.jsonl``).

:class:`ClientLog` is one client's part in a round; :class:`RoundStats` the round's totals.
Every change of a client's status goes through a method of :class:`RoundStats`, so the
totals (``replied``, ``rejected``, ``failed``, ``bytes_up``) always agree with the rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fedsim.codecs.base import PayloadError

log = logging.getLogger("fedsim")


@dataclass
class ClientLog:
    """One client's part in one round (a row of clients.jsonl)."""

    round: int
    client: int
    status: str  # "ok", "rejected", "failed", "no-reply", "dropped-before", "dropped-mid", ...
    bytes_down: int = 0
    bytes_up: int = 0
    num_examples: float = 0.0
    train_loss: float | None = None
    reason: str = ""
    arrival_s: float | None = None  # simulated seconds into the round (network model only)
    profile: str | None = None


def rejection_reason(err: BaseException) -> str:
    """A PayloadError's message, else the exception's type and message (at most 300 characters)."""
    return (str(err) if isinstance(err, PayloadError) else f"{type(err).__name__}: {err}")[:300]


@dataclass
class RoundStats:
    sampled: int = 0
    replied: int = 0
    rejected: int = 0
    failed: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    model_refused: int = 0  # 1 when the aggregate was not finite and the previous model was kept
    clients: list[ClientLog] = field(default_factory=list)
    network: dict[str, Any] = field(default_factory=dict)  # the network model's round summary

    def failed_reply(self, entry: ClientLog, reason: str) -> None:
        """``entry``'s reply was an error (the client or its node failed)."""
        entry.status, entry.reason = "failed", reason[:300]
        self.failed += 1
        log.warning("round %d: client %d failed: %s", entry.round, entry.client, entry.reason)

    def received(self, entry: ClientLog, nbytes: int) -> None:
        """``nbytes`` of ``entry``'s reply reached the server."""
        entry.bytes_up = nbytes
        self.bytes_up += nbytes

    def accepted(self, entry: ClientLog, num_examples: float, train_loss: float) -> None:
        """``entry``'s reply passed the checks."""
        entry.status, entry.num_examples, entry.train_loss = "ok", num_examples, train_loss
        self.replied += 1

    def reject(self, entry: ClientLog, err: BaseException) -> None:
        """Mark one client's reply rejected, with the reason (:func:`rejection_reason`)."""
        if entry.status == "ok":
            self.replied -= 1
        entry.status, entry.reason = "rejected", rejection_reason(err)
        self.rejected += 1
        log.warning("round %d: rejected the reply of client %d: %s", entry.round, entry.client, entry.reason)

    def settle(self, entries: Iterable[ClientLog], outcome: Any) -> set[int]:
        """Apply the network model's outcome of the round (:meth:`fedsim.network.model.NetworkModel.settle`):
        arrival times and profiles; clients that dropped mid-round, missed the deadline or were
        not needed leave the counts. Returns the clients whose update is kept."""
        by_client = {e.client: e for e in entries}
        for c in outcome.clients:
            e = by_client[c.client]
            e.arrival_s, e.profile = float(c.event_s), c.profile
            if c.status != "kept":
                if e.status == "ok":
                    self.replied -= 1
                elif e.status == "rejected":
                    self.rejected -= 1
                if c.status == "dropped_mid":  # nothing reached the server
                    self.bytes_up -= e.bytes_up
                    e.bytes_up = 0
                e.status = c.status.replace("_", "-")
        summary = outcome.summary()
        self.network = {
            "sim_round_s": summary["sim_round_s"], "sim_time": summary["sim_time_s"],
            "dropped_before": summary["dropped_before"], "dropped_mid": summary["dropped_mid"],
            "missed_deadline": summary["missed_deadline"], "not_needed": summary["not_needed"],
        }
        return set(outcome.kept)
