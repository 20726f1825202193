"""NNM: Nearest Neighbor Mixing in front of any aggregation strategy.

Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by Mixing: A Recipe for
Optimal Byzantine ML under Heterogeneity", AISTATS 2023 (PMLR 206),
https://arxiv.org/abs/2302.01772 (Algorithm 1).

A wrapper, not a subclass: :class:`NNM` holds an inner Flower strategy (Flower's Krum,
FedMedian, FedTrimmedAvg, FedAvg, fedsim's ``trimmed_mean``, a plugin) and, before the
inner strategy aggregates a round, replaces every client's model by the mean of its
``n - f`` nearest neighbours among the ``n`` valid replies (itself included)::

    y_i = (1 / (n - f)) sum_{j in N_i} x_j,   N_i = the n - f replies nearest x_i (L2)

(:func:`fedsim.robust.aggregators.nnm`). The rows are the models the replies carry
(``"arrays"``: model sent + decoded update, with any omniscient attack already applied by
:class:`fedsim.engine.wrapper.FedsimWrapper`). Every client of a round starts from the same
model, so mixing the models is mixing the updates (distances and means commute with the
common shift). Everything else (sampling, the messages, evaluation) is the inner strategy's.

Config::

    strategy:
      name: nnm
      params: {inner: fedtrimmedavg, inner_params: {beta: 0.2}, f: 5}
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.codecs.model import model_vector, split_vector
from fedsim.engine.view import PayloadStrategy
from fedsim.registry import STRATEGIES
from fedsim.robust.aggregators import nnm
from fedsim.wire import to_record, with_content

log = logging.getLogger("fedsim")


def mix_replies(replies: list[Message], f: int) -> list[Message]:
    """The replies with each one's model replaced by its NNM mix (same metadata, metrics).

    Each reply carries one ``ArrayRecord`` (whatever its key); every reply must hold the
    same tensor names and shapes. Returns fresh messages; the inputs are not modified.
    """
    if not replies:
        return []
    keys = [list(m.content.array_records.keys()) for m in replies]
    if any(len(k) != 1 for k in keys) or len({k[0] for k in keys}) != 1:
        raise ValueError("NNM needs exactly one ArrayRecord per reply, under the same key")
    key = keys[0][0]
    models = [m.content.array_records[key] for m in replies]
    names = list(models[0].keys())
    arrays = [[np.asarray(a.numpy()) for a in rec.values()] for rec in models]
    shapes = [a.shape for a in arrays[0]]
    if any(list(rec.keys()) != names or [a.shape for a in arr] != shapes for rec, arr in zip(models, arrays)):
        raise ValueError("NNM needs every reply to carry the same tensors (names and shapes)")
    dtypes = [a.dtype for a in arrays[0]]
    x = np.stack([model_vector(arr, np.float32) for arr in arrays])
    y = nnm(x, f)  # y_i = mean of the n-f rows nearest x_i
    out = []
    for msg, row in zip(replies, y):
        content = RecordDict()
        content[key] = to_record({n: p.astype(d) for n, p, d in zip(names, split_vector(row, shapes), dtypes)})
        for k, mrec in msg.content.metric_records.items():
            content[k] = MetricRecord(dict(mrec))
        for k, crec in msg.content.config_records.items():
            content[k] = ConfigRecord(dict(crec))
        out.append(with_content(msg, content))
    return out


class NNM(Strategy):
    """Nearest Neighbor Mixing in front of ``inner``.

    Parameters
    ----------
    inner : Strategy
        The aggregation strategy that receives the mixed models. It must take decoded
        models (``"arrays"``); a :class:`~fedsim.engine.view.PayloadStrategy`, which
        consumes raw payloads, cannot be wrapped.
    f : int
        Byzantine clients tolerated; a round needs ``2f < n`` valid replies, else the
        model is kept for that round (with a warning). Give the inner rule its own
        tolerance (Krum's ``num_malicious_nodes``, ``trimmed_mean``'s ``f``) separately.
    """

    def __init__(self, inner: Strategy, f: int) -> None:
        if isinstance(f, bool) or not isinstance(f, int) or f < 0:
            raise ValueError(f"NNM needs an integer f >= 0 (Byzantine clients tolerated); got f={f!r}")
        if isinstance(inner, PayloadStrategy):
            raise ValueError(
                f"NNM mixes decoded models, but {type(inner).__name__} consumes raw codec payloads; "
                "put NNM in front of an aggregator that takes 'arrays' (fedavg, krum, fedmedian, ...)"
            )
        self.inner, self.f = inner, f

    @property
    def round_metrics(self) -> dict[str, Any]:
        return dict(getattr(self.inner, "round_metrics", None) or {})

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        ok = [m for m in replies if not m.has_error()]
        if not 2 * self.f < len(ok):
            log.warning("round %d: NNM needs 2f < n; got f=%d and %d valid replies: model kept",
                        server_round, self.f, len(ok))
            return None, None
        return self.inner.aggregate_train(server_round, mix_replies(ok, self.f))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        log.info("NNM (f=%d) in front of %s", self.f, type(self.inner).__name__)
        self.inner.summary()


@STRATEGIES.register("nnm")
def nnm_strategy(inner: str, f: int, inner_params: Mapping[str, Any] | None = None) -> NNM:
    """NNM in front of the registered strategy ``inner`` built with ``inner_params``."""
    return NNM(STRATEGIES.build(inner, dict(inner_params or {})), f)


__all__ = ["NNM", "mix_replies", "nnm_strategy"]
