"""Base for fedsim's own strategies, which are evaluated on the server.

fedsim's loop evaluates the model a strategy returns on the held-out test set (and
per-client models through ``wrapper.evaluator``), so these strategies ask clients for
no federated evaluation round.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


class ServerEvaluatedStrategy(Strategy):
    """A Flower ``Strategy`` with no federated evaluation (``configure_evaluate`` sends nothing)."""

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None
