"""Coordinate-wise trimmed mean with a fixed number ``f`` of values cut per side.

Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", ICML 2018 (PMLR 80), https://arxiv.org/abs/1803.01498 (Definition 2,
the coordinate-wise trimmed mean)::

    TM_f(x_1..x_n)[k] = (1 / (n - 2f)) sum_{j = f}^{n-f-1} x_(j)[k]    (x_(j): sorted)

Flower's ``FedTrimmedAvg`` is the same rule (unweighted, coordinate-wise) parameterised by
a fraction: it cuts ``int(beta * n)`` values per side, with ``n`` the number of replies that
arrived. So the number cut changes when replies are rejected, and ``beta = f / n`` can cut
``f - 1`` by rounding (``f = 3, n = 47``: ``int(3/47 * 47) = 2``). This strategy cuts
exactly ``f`` per side, the count the robustness literature (MoNNA, NNM) states its results
for; with ``beta`` in ``[f/n, (f+1)/n)`` and ``n`` replies the two agree.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from fedsim.registry import STRATEGIES
from fedsim.robust.aggregators import trimmed_mean

log = logging.getLogger("fedsim")


class TrimmedMean(FedAvg):
    """Coordinate-wise trimmed mean cutting ``f`` values per side (needs ``2f < n``).

    Sampling is fedsim's (the wrapper shows this strategy only the sampled nodes, and it
    takes all of them); evaluation is server-side. A round with ``2f >= n`` valid replies
    keeps the model, with a warning.
    """

    def __init__(self, f: int) -> None:
        if isinstance(f, bool) or not isinstance(f, int) or f < 0:
            raise ValueError(f"trimmed mean needs an integer f >= 0 (values cut per side); got f={f!r}")
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1,
                         min_evaluate_nodes=0, min_available_nodes=1)
        self.f = f

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        if not 2 * self.f < len(valid):
            log.warning("round %d: trimmed mean needs 2f < n; got f=%d and %d valid replies: model kept",
                        server_round, self.f, len(valid))
            return None, None
        key = list(valid[0].content.array_records.keys())[0]
        arrays = ArrayRecord()
        for name in valid[0].content.array_records[key].keys():
            layers = np.stack([np.asarray(m.content.array_records[key][name].numpy()) for m in valid])
            flat = trimmed_mean(layers.reshape(len(valid), -1), self.f)  # (1/(n-2f)) sum_{j=f}^{n-f-1} x_(j)
            arrays[name] = Array(np.asarray(flat.reshape(layers.shape[1:]), dtype=layers.dtype))
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return arrays, metrics

    def summary(self) -> None:
        log.info("TrimmedMean: f=%d cut per side", self.f)


STRATEGIES.add("trimmed_mean", TrimmedMean)

__all__ = ["TrimmedMean"]
