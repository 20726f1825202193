"""A payload-consuming strategy is one file plus one test: it runs under Flower's own
``Strategy.start``, with no fedsim wrapper, through :class:`fedsim.engine.view.PayloadStrategy`.

The strategy below (the whole of it) validates and decodes the clients' payloads with the
view's codec, screens them (finite), applies the view's server attack and steps the model by their mean. Flower's
``Strategy.start`` drives three rounds on an in-process grid whose tiny ClientApp replies
with ``(client id + 1)`` in every coordinate, so every number is known by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from fedsim.attacks.byzantine import SignFlip
from fedsim.codecs.base import Payload, PayloadError
from fedsim.codecs.dense import Identity
from fedsim.codecs.model import decode_update, model_vector, split_vector, tensor_infos, validate_update
from fedsim.engine.inprocess import InProcessGrid
from fedsim.engine.view import PayloadStrategy, RoundView
from fedsim.keys import ARRAYS, CONFIG, NUM_EXAMPLES, TRAIN_LOSS
from fedsim.wire import make_reply, to_record


class MeanStep(PayloadStrategy):
    """x <- x + mean_i decode(payload_i): FedAvg with equal weights, decoded by the strategy."""

    def __init__(self, attackers: frozenset[int] = frozenset()) -> None:
        self.attackers = attackers
        self.seen: list[RoundView] = []

    def standalone_view(self, server_round: int, arrays: ArrayRecord, grid: Grid) -> RoundView:
        view = super().standalone_view(server_round, arrays, grid)
        clients = {node: i for i, node in enumerate(sorted(view.node_to_client))}  # node -> partition id
        return RoundView(server_round, view.seed, clients, view.codec, view.infos,
                         server_attack=SignFlip() if self.attackers else None, server_attackers=self.attackers)

    def configure(self, view: RoundView, arrays: ArrayRecord, config: ConfigRecord,
                  grid: Grid) -> Iterable[Message]:
        self.seen.append(view)
        return [Message(RecordDict({ARRAYS: arrays, CONFIG: ConfigRecord(dict(config))}), dst_node_id=node,
                        message_type=MessageType.TRAIN) for node in grid.get_node_ids()]

    def validate(self, payload: Payload, client: int, view: RoundView) -> None:
        validate_update(view.codec, payload, view.infos)

    def aggregate(self, view: RoundView, payloads: Mapping[int, Payload],
                  metrics: Mapping[int, Mapping[str, float]]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        updates = {c: decode_update(view.codec, p, view.infos, view.seed, view.server_round, c)
                   for c, p in payloads.items()}
        updates = {c: u for c, u in updates.items() if view.screen(c, u)}
        updates.update(view.forge_updates(updates))
        self.last_updates = updates
        x = model_vector(self.model, np.float32) + np.mean([model_vector(u) for u in updates.values()], axis=0)
        self.model = split_vector(x, view.shapes)
        return to_record({i.name: t for i, t in zip(view.infos, self.model)}), MetricRecord(
            {NUM_EXAMPLES: float(sum(m[NUM_EXAMPLES] for m in metrics.values()))})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        self.model = arrays.to_numpy_ndarrays()  # the model of the round that just ended
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        pass


client_app = ClientApp()


@client_app.train()
def reply_with_id(msg: Message, context: Context) -> Message:
    """Every tensor's update is ``partition-id + 1`` everywhere (identity codec: ``"<i>.x"``)."""
    value = float(context.node_config["partition-id"]) + 1.0
    tensors = msg.content.array_records[ARRAYS].to_numpy_ndarrays()
    payload = {f"{i}.x": np.full(t.shape, value, np.float32) for i, t in enumerate(tensors)}
    if value == 3.0 and "nan" in msg.content.config_records[CONFIG]:
        payload["0.x"][0, 0] = np.nan  # refused by the strategy's validate (the identity codec's fields)
    return make_reply(msg, payload, {NUM_EXAMPLES: 10.0, TRAIN_LOSS: 0.5})


def start(strategy: MeanStep, rounds: int, config: ConfigRecord | None = None) -> ArrayRecord:
    initial = to_record({"w": np.zeros((2, 2), np.float32), "b": np.zeros(3, np.float32)})
    strategy.model = initial.to_numpy_ndarrays()
    result = strategy.start(InProcessGrid(client_app, 3), initial, num_rounds=rounds, train_config=config)
    return result.arrays


def test_a_payload_strategy_runs_under_flowers_strategy_start_without_the_wrapper():
    strategy = MeanStep()
    arrays = start(strategy, 3)
    for a in arrays.to_numpy_ndarrays():  # each round adds mean(1, 2, 3) = 2 to every coordinate
        np.testing.assert_array_equal(a, np.full(a.shape, 6.0, np.float32))
    assert [v.server_round for v in strategy.seen] == [1, 2, 3]
    assert [i.name for i in strategy.seen[0].infos] == ["w", "b"] and strategy.seen[0].shapes == [(2, 2), (3,)]


def test_the_view_forges_what_the_strategy_decodes_and_a_bad_reply_is_left_out():
    strategy = MeanStep(attackers=frozenset({0}))  # client 0 forged as -mean(honest): -(2 + 3)/2
    arrays = start(strategy, 1)
    np.testing.assert_array_equal(strategy.last_updates[0][1], np.full(3, -2.5, np.float32))
    for a in arrays.to_numpy_ndarrays():  # mean(-2.5, 2, 3) = 0.8333...
        np.testing.assert_allclose(a, np.full(a.shape, 2.5 / 3), rtol=1e-6)
    refused = MeanStep()
    arrays = start(refused, 1, ConfigRecord({"nan": 1}))  # client 2's payload is not finite: left out
    assert sorted(refused.last_updates) == [0, 1]
    for a in arrays.to_numpy_ndarrays():
        np.testing.assert_array_equal(a, np.full(a.shape, 1.5, np.float32))


def test_a_round_view_is_read_only():
    view = RoundView(1, 0, {5: 0}, Identity(), tuple(tensor_infos([("w", (1,))])))
    with pytest.raises(AttributeError):
        view.seed = 2  # type: ignore[misc]  # frozen: the point of the test
    with pytest.raises(PayloadError):
        MeanStep().validate({"0.y": np.zeros(1, np.float32)}, 0, view)
