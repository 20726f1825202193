"""The server loop and the wrapper, on the in-process grid (the real ClientApp, no Ray)."""

import json

import numpy as np
import pytest
from conftest import run_inprocess
from flwr.app import ArrayRecord, ConfigRecord

from fedsim.clients.app import app
from fedsim.codecs.base import Codec, CodecContext, Field, Payload, State, TensorInfo
from fedsim.engine.inprocess import InProcessGrid
from fedsim.engine.server import build_wrapper, discover
from fedsim.engine.wrapper import sample_clients
from fedsim.metrics import read_rows


def client_rows(run_dir):
    return [json.loads(l) for l in (run_dir / "clients.jsonl").read_text().splitlines()]


def test_bytes_in_metrics_equal_payload_sizes(tmp_path, cfg_factory):
    cfg = cfg_factory()
    run_inprocess(cfg, tmp_path)
    rows, clients = read_rows(tmp_path), client_rows(tmp_path)
    dense = (64 * 32 + 32 + 32 * 10 + 10) * 4  # the MLP's float32 bytes, by hand
    for r in rows[1:]:
        mine = [c for c in clients if c["round"] == r["round"]]
        assert r["bytes_up"] == sum(c["bytes_up"] for c in mine) == r["replied"] * dense
        assert r["bytes_down"] == sum(c["bytes_down"] for c in mine) == r["sampled"] * dense
    assert rows[-1]["cum_bytes_up"] == sum(c["bytes_up"] for c in clients)
    for name in ("metrics.jsonl", "clients.jsonl", "metrics.csv", "summary.json"):
        assert (tmp_path / name).is_file()


def test_sampling_is_seeded_sorted_and_distinct():
    a = sample_clients(3, 7, range(100), 10)
    assert a == sample_clients(3, 7, list(range(100))[::-1], 10)
    assert len(set(a)) == 10 and a == sorted(a)
    assert a != sample_clients(4, 7, range(100), 10) and a != sample_clients(3, 8, range(100), 10)
    with pytest.raises(ValueError):
        sample_clients(0, 1, range(3), 4)


def test_same_seed_same_run_different_seed_different_run(tmp_path, cfg_factory):
    s1 = run_inprocess(cfg_factory(), tmp_path / "a")
    s2 = run_inprocess(cfg_factory(), tmp_path / "b")
    run_inprocess(cfg_factory("seed=1"), tmp_path / "c")
    c1, c2, c3 = (client_rows(tmp_path / d) for d in "abc")
    assert s1["final_accuracy"] == s2["final_accuracy"] and s1["final_loss"] == s2["final_loss"]
    def key(rows: list[dict]) -> list[tuple]:
        return [(c["round"], c["client"], c["train_loss"]) for c in rows]

    assert key(c1) == key(c2)
    assert [c["client"] for c in c1] != [c["client"] for c in c3]


def test_each_client_gets_its_own_message(cfg_factory):
    cfg = cfg_factory()
    grid = InProcessGrid(app, cfg.data.num_clients)
    wrapper = build_wrapper(cfg)
    wrapper.bind_nodes(discover(grid, list(grid.get_node_ids()), 10))
    arrays = ArrayRecord([np.zeros(3, np.float32)])
    msgs = list(wrapper.configure_train(1, arrays, ConfigRecord({"lr": 0.1}), grid))
    assert len(msgs) == cfg.clients_per_round
    assert len({id(m.content) for m in msgs}) == len(msgs)
    assert len({id(m.content.config_records["config"]) for m in msgs}) == len(msgs)
    msgs[0].content.config_records["config"]["lr"] = 99.0
    assert all(m.content.config_records["config"]["lr"] == 0.1 for m in msgs[1:])
    assert {m.metadata.dst_node_id for m in msgs} <= set(grid.get_node_ids())


def test_fedavg_through_fedsim_equals_hand_fedavg(tmp_path, cfg_factory):
    """Differential: one round through wrapper + Flower FedAvg == the weighted mean of local models."""
    from fedsim.clients.trainer import local_train
    from fedsim.config import ClientSpec
    from fedsim.engine.server import Evaluator

    cfg = cfg_factory("rounds=1", "data.partition.kind=dirichlet", "data.partition.alpha=1.0")
    grid = InProcessGrid(app, cfg.data.num_clients)
    wrapper = build_wrapper(cfg)
    sizes: dict[int, int] = {}  # the FedAvg weights: each client's size, from discovery
    mapping = discover(grid, list(grid.get_node_ids()), 10, spec_json=wrapper.spec_json, sizes=sizes)
    wrapper.bind_nodes(mapping, sizes)
    start = Evaluator(cfg).initial_arrays()
    names, w0 = list(start.keys()), start.to_numpy_ndarrays()
    msgs = wrapper.configure_train(1, start, ConfigRecord(), grid)
    agg, _ = wrapper.aggregate_train(1, grid.send_and_receive(msgs))
    got = agg.to_numpy_ndarrays()

    spec = ClientSpec.from_config(cfg)
    chosen = sample_clients(cfg.seed, 1, range(cfg.data.num_clients), cfg.clients_per_round)
    models, weights = [], []
    for c in chosen:
        new, m = local_train(spec, names, w0, c, [cfg.seed, 1, c])
        models.append(new)
        weights.append(m["num-examples"])
    expected = [sum(w * m[i] for w, m in zip(weights, models)) / sum(weights) for i in range(len(w0))]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_nan_client_is_rejected_and_the_round_completes(tmp_path, cfg_factory):
    cfg = cfg_factory("clients_per_round=10", "attack={name: nan, clients: [2, 7]}", "rounds=2")
    summary = run_inprocess(cfg, tmp_path)
    rows = read_rows(tmp_path)[1:]
    assert [r["rejected"] for r in rows] == [2, 2] and [r["replied"] for r in rows] == [8, 8]
    assert summary["rejected"] == 4
    bad = [c for c in client_rows(tmp_path) if c["status"] == "rejected"]
    assert {c["client"] for c in bad} == {2, 7}
    assert all("non-finite" in c["reason"] for c in bad)
    assert rows[-1]["test_accuracy"] > read_rows(tmp_path)[0]["test_accuracy"]


def test_failed_and_silent_clients_are_counted(tmp_path, cfg_factory):
    cfg = cfg_factory("clients_per_round=10", "rounds=1")
    grid = InProcessGrid(app, 10, node_config={i: {"partition-id": i} for i in range(10)})
    grid.contexts[grid.node_ids[4]].node_config = {"partition-id": 4, "num-partitions": 10}
    # client 3 raises inside its ClientApp (no partition 99), client 5's node never answers
    run_dir = tmp_path
    from fedsim.engine.server import run_server
    orig = grid.push_messages

    def push(messages):
        messages = list(messages)
        grid.down = {grid.node_ids[5]} if any(m.metadata.message_type == "train" for m in messages) else set()
        grid.contexts[grid.node_ids[3]].node_config = (
            {"partition-id": 99} if grid.down else {"partition-id": 3})
        return orig(messages)

    grid.push_messages = push
    run_server(grid, cfg, run_dir)
    r = read_rows(run_dir)[1]
    assert (r["sampled"], r["replied"], r["failed"], r["no_reply"]) == (10, 8, 1, 1)


class RoundCounter(Codec):
    """Identity codec whose per-tensor state counts the rounds this client has encoded."""

    def init(self, info: TensorInfo) -> State:
        return {"n": np.zeros(1, np.int64)}

    def encode(self, x: np.ndarray, state: State, ctx: CodecContext) -> tuple[Payload, State]:
        n = state["n"] + 1
        return {"x": x.astype(np.float32), "n": n.astype(np.int64)}, {"n": n}

    def decode(self, payload: Payload, info: TensorInfo, ctx: CodecContext) -> np.ndarray:
        return payload["x"]

    def fields(self, info: TensorInfo) -> dict[str, Field]:
        return {"x": Field("float32", info.shape), "n": Field("int64", (1,), low=1)}


def test_client_state_persists_across_rounds(tmp_path, cfg_factory):
    cfg = cfg_factory("codec.name=test_engine:RoundCounter", "clients_per_round=10", "rounds=3",
                      "data.num_clients=10")
    grid = InProcessGrid(app, 10)
    run_inprocess(cfg, tmp_path, grid)
    from fedsim.state import ContextStore
    for node in grid.node_ids:
        state = ContextStore(grid.contexts[node]).load()
        assert {k: int(v[0]) for k, v in state.items()} == {f"{i}.n": 3 for i in range(4)}


def test_server_attack_replaces_byzantine_updates_with_forged_ones(cfg_factory):
    cfg = cfg_factory("attack={name: sign_flip, clients: [1, 3]}")
    wrapper = build_wrapper(cfg)
    assert wrapper.server_attackers == {1, 3} and wrapper.attackers == {}  # nothing sent to clients
    from fedsim.codecs.model import tensor_infos
    wrapper.context.infos = tensor_infos([("w", (2,)), ("b", (1,))])
    deltas = {0: [np.array([1.0, 2.0], np.float32), np.array([3.0], np.float32)],
              1: [np.array([9.0, 9.0], np.float32), np.array([9.0], np.float32)],
              2: [np.array([3.0, 4.0], np.float32), np.array([5.0], np.float32)],
              3: [np.array([7.0, 7.0], np.float32), np.array([7.0], np.float32)]}
    wrapper.apply_server_attack(1, deltas)
    for c in (1, 3):  # sign flipping: -mean of the honest updates, tensor by tensor
        np.testing.assert_allclose(deltas[c][0], [-2.0, -3.0])
        np.testing.assert_allclose(deltas[c][1], [-4.0])
    np.testing.assert_allclose(deltas[0][0], [1.0, 2.0])


def test_sign_flipping_hurts_fedavg(tmp_path, cfg_factory):
    clean = run_inprocess(cfg_factory("clients_per_round=10", "rounds=4"), tmp_path / "clean")
    attacked = run_inprocess(cfg_factory("clients_per_round=10", "rounds=4",
                                         "attack={name: sign_flip, clients: [0, 1, 2, 3]}"), tmp_path / "att")
    assert attacked["final_accuracy"] < clean["final_accuracy"] - 0.2


def test_an_error_reply_from_the_superlink_counts_against_the_dead_client(tmp_path, cfg_factory):
    """A SuperLink answers for a node that died with an error whose source is itself (node 1)."""
    cfg = cfg_factory("clients_per_round=10", "rounds=1")
    grid = InProcessGrid(app, 10)
    orig = grid.push_messages

    def push(messages):
        messages = list(messages)
        grid.dead = {grid.node_ids[6]} if messages[0].metadata.message_type == "train" else set()
        return orig(messages)

    grid.push_messages = push
    run_inprocess(cfg, tmp_path, grid)
    r = read_rows(tmp_path)[1]
    assert (r["replied"], r["failed"], r["no_reply"]) == (9, 1, 0)
    (dead,) = [c for c in client_rows(tmp_path) if c["status"] == "failed"]
    assert dead["client"] == 6 and "Node unavailable" in dead["reason"]


def test_discovery_refuses_bad_and_duplicate_ids_without_failing(cfg_factory):
    """A lying or broken node cannot crash discovery or take another client's place."""
    grid = InProcessGrid(app, 6)
    ids = grid.node_ids
    grid.contexts[ids[1]].node_config = {"partition-id": 0}    # claims client 0 too
    grid.contexts[ids[2]].node_config = {"partition-id": 99}   # out of range
    grid.contexts[ids[3]].node_config = {"partition-id": -1}   # negative
    sizes: dict[int, int] = {}
    spec = build_wrapper(cfg_factory("data.num_clients=6", "clients_per_round=2")).spec_json
    mapping = discover(grid, list(ids), 10, spec_json=spec, sizes=sizes, num_clients=6)
    assert mapping == {ids[4]: 4, ids[5]: 5}  # 0 is claimed twice: neither node gets it
    assert set(sizes) == {4, 5} and all(v > 0 for v in sizes.values())


def test_a_node_that_left_is_not_sampled_again(tmp_path, cfg_factory):
    cfg = cfg_factory("clients_per_round=10", "rounds=2")
    grid = InProcessGrid(app, 10)
    gone = grid.node_ids[3]
    orig = grid.get_node_ids
    calls = {"n": 0}

    def node_ids():  # node 3 disconnects after discovery
        calls["n"] += 1
        ids = list(orig())
        return ids if calls["n"] <= 1 else [n for n in ids if n != gone]

    grid.get_node_ids = node_ids
    run_inprocess(cfg, tmp_path, grid)
    rows = read_rows(tmp_path)[1:]
    assert [(r["sampled"], r["replied"]) for r in rows] == [(9, 9), (9, 9)]
    assert 3 not in {c["client"] for c in client_rows(tmp_path)}
