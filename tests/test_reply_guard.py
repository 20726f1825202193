"""The one guarded reply path (issue 13): every fault of one reply rejects that client only.

The clients here are hand-written ClientApps on the in-process grid (messages still pass
through Flower's serialization): each answers discovery with its size and a training
message with whatever payload and metrics the test gives it. The model is two small
tensors; the inner strategy is Flower's FedAvg.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedsim.codecs.base import Codec, CodecContext, Payload, TensorInfo
from fedsim.codecs.dense import Identity
from fedsim.config import ValidationConfig
from fedsim.engine.inprocess import InProcessGrid
from fedsim.engine.server import discover
from fedsim.engine.wrapper import FedsimWrapper
from fedsim.registry import STRATEGIES
from fedsim.wire import METRICS, make_reply, to_record

SIZES = {0: 10, 1: 30, 2: 20, 3: 40}
SHAPES = {"w": (2, 3), "b": (3,)}
Reply = Callable[[int], tuple[dict[str, np.ndarray], dict[str, Any]]]


def honest(cid: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Client ``cid``'s update is ``cid + 1`` everywhere; its metrics fedsim's client's."""
    payload = {f"{i}.x": np.full(s, cid + 1.0, np.float32) for i, s in enumerate(SHAPES.values())}
    return payload, {"num-examples": float(SIZES[cid]), "train-loss": 0.5, "steps": 3.0}


class Clients:
    """A ClientApp: discovery answers with the client's size (or none), training with ``replies[cid]``."""

    def __init__(self, replies: dict[int, Reply] | None = None, unknown: tuple[int, ...] = ()) -> None:
        self.replies = replies or {}
        self.unknown = unknown

    def __call__(self, msg: Message, context: Any) -> Message:
        cid = int(context.node_config["partition-id"])
        if msg.metadata.message_type == MessageType.QUERY:
            m = {"partition-id": cid} if cid in self.unknown else {"partition-id": cid, "num-examples": SIZES[cid]}
            return Message(RecordDict({METRICS: MetricRecord(m)}), reply_to=msg)
        payload, metrics = self.replies.get(cid, honest)(cid)
        return make_reply(msg, payload, metrics)


def one_round(clients: Clients, codec: Codec | None = None, base: float = 0.0, inner: Any = None,
              server_round: int = 1, wrapper: FedsimWrapper | None = None, grid: InProcessGrid | None = None,
              **validation: Any) -> tuple[FedsimWrapper, ArrayRecord | None]:
    grid = grid or InProcessGrid(clients, len(SIZES))
    if wrapper is None:
        wrapper = FedsimWrapper(inner or STRATEGIES.build("fedavg"), codec or Identity(), "{}", 0, len(SIZES),
                                validation=ValidationConfig(**validation))
        sizes: dict[int, int] = {}
        wrapper.bind_nodes(discover(grid, list(grid.get_node_ids()), 10, spec_json="{}", sizes=sizes), sizes)
    start = to_record({k: np.full(s, base, np.float32) for k, s in SHAPES.items()})
    msgs = wrapper.configure_train(server_round, start, ConfigRecord(), grid)
    arrays, _ = wrapper.aggregate_train(server_round, grid.send_and_receive(msgs))
    return wrapper, arrays


def expected_mean(clients: list[int], base: float = 0.0) -> float:
    """FedAvg of the honest updates of ``clients``, weighted by their sizes."""
    return base + sum(SIZES[c] * (c + 1.0) for c in clients) / sum(SIZES[c] for c in clients)


def status(wrapper: FedsimWrapper) -> dict[int, tuple[str, str]]:
    return {e.client: (e.status, e.reason) for e in wrapper.stats.clients}


def assert_model(arrays: ArrayRecord | None, value: float) -> None:
    assert arrays is not None
    for a in arrays.to_numpy_ndarrays():
        np.testing.assert_allclose(a, value, rtol=1e-6)


def test_honest_round_is_the_size_weighted_mean():
    w, arrays = one_round(Clients())
    assert_model(arrays, expected_mean([0, 1, 2, 3]))
    assert (w.stats.replied, w.stats.rejected, w.stats.model_refused) == (4, 0, 0)


@pytest.mark.parametrize("index", ["\u0661", "\uff11", "01", "\u00b9", "+1", " 1", "1 ", "\U0001d7cf", "1\n"])
def test_a_non_canonical_key_rejects_that_client_only(index):
    """Before: '\u00b9' passed isdigit() and crashed int() in the server; '\u0661' and '01' aliased '1'."""
    def bad(cid):
        payload, metrics = honest(cid)
        payload[f"{index}.x"] = payload.pop("1.x")
        return payload, metrics

    w, arrays = one_round(Clients({2: bad}))
    st, reason = status(w)[2]
    assert st == "rejected" and "unexpected payload key" in reason
    assert_model(arrays, expected_mean([0, 1, 3]))


def test_two_spellings_of_one_key_reject_the_reply():
    """Before: '00.x' and '0.x' were one key twice, the later silently winning."""
    def alias(cid):
        payload, metrics = honest(cid)
        payload["00.x"] = np.full(SHAPES["w"], 1e6, np.float32)
        return payload, metrics

    w, arrays = one_round(Clients({1: alias}))
    assert status(w)[1][0] == "rejected"
    assert_model(arrays, expected_mean([0, 2, 3]))


def test_replies_with_different_metric_keys_aggregate_and_unknown_metrics_are_dropped(caplog):
    """Before: a documented reply without fedsim's optional metrics made FedAvg raise in aggregate_train."""
    def bare(cid):
        payload, _ = honest(cid)
        return payload, {"num-examples": float(SIZES[cid]), "train-loss": 0.25}

    def extra(cid):
        payload, metrics = honest(cid)
        return payload, {**metrics, "foo": 7.0, "train-s": float("nan"), "accuracy": 0.9}

    clients = Clients({0: bare, 1: extra, 3: extra})
    with caplog.at_level(logging.WARNING, logger="fedsim"):
        w, arrays = one_round(clients)
        one_round(clients, wrapper=w, server_round=2, grid=InProcessGrid(clients, len(SIZES)))
    assert_model(arrays, expected_mean([0, 1, 2, 3]))
    assert w.stats.replied == 4
    dropped = [r for r in caplog.records if "not one fedsim knows" in r.getMessage()]
    assert sorted(r.args[0] for r in dropped) == ["accuracy", "foo"]  # each once over both rounds


def test_claimed_examples_must_match_discovery():
    """Before: one client claiming 1e300 examples replaced the model with its own."""
    def inflated(cid):
        payload, metrics = honest(cid)
        return payload, {**metrics, "num-examples": 1e300}

    w, arrays = one_round(Clients({3: inflated}))
    st, reason = status(w)[3]
    assert st == "rejected" and "num-examples" in reason and "40 examples" in reason
    assert_model(arrays, expected_mean([0, 1, 2]))


def test_examples_tolerance_accepts_near_claims_at_the_known_weight():
    def near(cid):
        payload, metrics = honest(cid)
        return payload, {**metrics, "num-examples": SIZES[cid] * 1.05}

    w, arrays = one_round(Clients({1: near}), examples_tolerance=0.1)
    assert status(w)[1][0] == "ok"
    assert_model(arrays, expected_mean([0, 1, 2, 3]))  # weighted by the known 30, not 31.5
    w, _ = one_round(Clients({1: near}))  # default tolerance: the exact count (+-1/2)
    assert status(w)[1][0] == "rejected"


def test_a_client_of_unknown_size_weighs_the_median_known_size():
    def inflated(cid):
        payload, metrics = honest(cid)
        return payload, {**metrics, "num-examples": 1e300}

    w, arrays = one_round(Clients({3: inflated}, unknown=(3,)))
    assert status(w)[3][0] == "ok"
    median = float(np.median([SIZES[c] for c in (0, 1, 2)]))  # 20
    value = (sum(SIZES[c] * (c + 1.0) for c in (0, 1, 2)) + median * 4.0) / (sum(SIZES[c] for c in (0, 1, 2)) + median)
    assert_model(arrays, value)


class Flaky(Identity):
    """Identity, except that decoding client 2's payload raises (any exception type)."""

    def decode(self, payload: Payload, info: TensorInfo, ctx: CodecContext) -> np.ndarray:
        if ctx.client == 2:
            raise ZeroDivisionError("boom")
        return super().decode(payload, info, ctx)


class Overflowing(Identity):
    """A codec whose valid payloads can decode to inf (what the bounded scales now prevent)."""

    def decode(self, payload: Payload, info: TensorInfo, ctx: CodecContext) -> np.ndarray:
        with np.errstate(over="ignore"):
            return super().decode(payload, info, ctx) * np.float32(1e38) * np.float32(10)


def test_an_exception_while_decoding_rejects_that_client_with_its_reason():
    w, arrays = one_round(Clients(), codec=Flaky())
    assert status(w)[2] == ("rejected", "ZeroDivisionError: boom")
    assert_model(arrays, expected_mean([0, 1, 3]))
    assert w.stats.replied + w.stats.rejected == 4


def test_a_decoded_update_that_is_not_finite_is_rejected():
    w, arrays = one_round(Clients(), codec=Overflowing())
    assert all(s == "rejected" and "not finite" in r for s, r in status(w).values())
    assert arrays is None


def test_update_norm_bound():
    """Before: a Gaussian attack with std 1e30 was accepted and the model diverged."""
    def huge(cid):
        payload, metrics = honest(cid)
        rng = np.random.default_rng(cid)
        return {k: (rng.standard_normal(v.shape) * 1e30).astype(np.float32) for k, v in payload.items()}, metrics

    w, arrays = one_round(Clients({0: huge}), max_update_norm=100.0)
    st, reason = status(w)[0]
    assert st == "rejected" and "max_update_norm" in reason
    assert_model(arrays, expected_mean([1, 2, 3]))
    w, _ = one_round(Clients(), max_update_norm=100.0)  # honest norms (<= 4*sqrt(9)) pass
    assert w.stats.replied == 4


def test_an_update_that_overflows_the_model_is_rejected():
    """Every update finite, but model + update overflows float32 for client 1."""
    def big(cid):
        payload, metrics = honest(cid)
        return {k: np.full(v.shape, 3e38, np.float32) for k, v in payload.items()}, metrics

    w, arrays = one_round(Clients({1: big}), base=1e38)
    assert status(w)[1] == ("rejected", "the model plus this update overflows float32")
    assert_model(arrays, expected_mean([0, 2, 3], base=1e38))


class NaNStrategy:
    """A (buggy) plugin strategy whose aggregate is NaN: what the wrapper must not pass on."""

    def __init__(self) -> None:
        self.inner = STRATEGIES.build("fedavg")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def aggregate_train(self, server_round, replies):
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        names, values = arrays.keys(), arrays.to_numpy_ndarrays()
        return to_record({k: np.full(a.shape, np.nan, np.float32) for k, a in zip(names, values)}), metrics


def test_a_non_finite_aggregate_is_refused_and_counted():
    w, arrays = one_round(Clients(), inner=NaNStrategy())
    assert arrays is None and w.stats.model_refused == 1
    assert w.stats.replied == 4  # the replies were valid; the model is what is refused


def test_a_failing_server_attack_rejects_the_attackers_only():
    from fedsim.attacks.base import ServerAttack

    class Broken(ServerAttack):
        def forge(self, honest, n, rng):
            raise IndexError("no such row")

    w = FedsimWrapper(STRATEGIES.build("fedavg"), Identity(), "{}", 0, len(SIZES))
    w.server_attack, w.server_attackers = Broken(), {1}
    grid = InProcessGrid(Clients(), len(SIZES))
    sizes: dict[int, int] = {}
    w.bind_nodes(discover(grid, list(grid.get_node_ids()), 10, spec_json="{}", sizes=sizes), sizes)
    _, arrays = one_round(Clients(), wrapper=w, grid=grid)
    assert status(w)[1] == ("rejected", "IndexError: no such row")
    assert_model(arrays, expected_mean([0, 2, 3]))


def test_clients_jsonl_rows_are_strict_json_with_the_reason(tmp_path):
    from fedsim.metrics import Recorder

    w, _ = one_round(Clients(), codec=Flaky())
    rec = Recorder(tmp_path)
    rec.round({"round": 1, "train_loss": float("nan"), "test_loss": float("inf"), "bytes_up": 1}, w.stats.clients)
    rec.close()
    row = json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert row["train_loss"] is None and row["test_loss"] is None
    rows = [json.loads(line) for line in (tmp_path / "clients.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rows if r["status"] == "rejected"] == ["ZeroDivisionError: boom"]


def test_a_nested_update_the_screen_refuses_is_left_out_of_the_running_mean():
    """Payload-consuming strategies screen what they decode (view.screen: finite, norm bound)."""
    from fedsim.codecs.model import encode_update, init_states
    from fedsim.codecs.nested import Ndqsg
    from fedsim.strategies.nested_dithering import decode_nested_group

    n, infos, codec = 256, [TensorInfo("w", (256,))], Ndqsg(m1=3, m2=1, bucket=64)
    rng = np.random.default_rng(0)
    mean = rng.standard_normal(n).astype(np.float32)
    payloads = {c: encode_update(codec, [mean + np.float32(0.01 * c)], infos, init_states(codec, infos), 7, 3, c)[0]
                for c in (1, 2, 3)}
    refused = []

    def screen(client, update):
        if client == 2:
            refused.append(client)
            return False
        return True

    out = decode_nested_group(codec, payloads, infos, 7, 3, [mean], count=1, screen=screen)
    alone = decode_nested_group(codec, {c: payloads[c] for c in (1, 3)}, infos, 7, 3, [mean], count=1)
    assert refused == [2] and sorted(out.accepted) == [1, 3] and out.rejected == []
    np.testing.assert_array_equal(out.side[0], alone.side[0])  # as if client 2 had not replied
