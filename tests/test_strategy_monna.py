"""MoNNA / NNA through the Flower plumbing (in-process grid, the real ClientApp)."""

import numpy as np
import pytest
import torch
from conftest import small_config
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from fedsim.attacks.byzantine import Gaussian, LabelFlip, SignFlipOwn
from fedsim.clients.app import app
from fedsim.clients.monna import monna as monna_task
from fedsim.clients.tasks import Job
from fedsim.config import ClientSpec
from fedsim.data.datasets import load_dataset, load_partition
from fedsim.engine.inprocess import InProcessGrid
from fedsim.engine.server import Evaluator, build_wrapper, discover
from fedsim.metrics import read_rows
from fedsim.models import build_model
from fedsim.registry import STRATEGIES, PluginError
from fedsim.strategies.monna import mix_round


def monna_cfg(params: str, *more: str):
    return small_config("clients_per_round=10", "train.batch_size=16",
                        f"strategy={{name: monna, params: {{{params}}}}}", *more)


def start(cfg):
    grid = InProcessGrid(app, cfg.data.num_clients)
    wrapper = build_wrapper(cfg)
    wrapper.bind_nodes(discover(grid, list(grid.get_node_ids()), 10))
    wrapper.evaluator = Evaluator(cfg)
    return grid, wrapper, wrapper.evaluator.initial_arrays()


def one_round(grid, wrapper, rnd, arrays):
    msgs = list(wrapper.configure_train(rnd, arrays, ConfigRecord(), grid))
    out, _ = wrapper.aggregate_train(rnd, grid.send_and_receive(msgs))
    return msgs, out


def flat(arrays) -> np.ndarray:
    return np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])


def hand_gradient(cfg, client, rnd, theta, flip=False):
    """grad of the mean cross-entropy on the minibatch the client draws, by hand in torch."""
    ds = load_dataset(cfg.data, cfg.seed)
    x, y = load_partition(cfg.data, cfg.seed, client)
    y = 9 - y if flip else y
    idx = np.random.default_rng([cfg.seed, rnd, client, 0x6D6F]).choice(
        len(y), size=min(cfg.train.batch_size, len(y)), replace=False)
    model = build_model(cfg.model.name, cfg.model.params, ds.input_shape, ds.num_classes, seed=0)
    sd = model.state_dict()
    parts = np.split(np.asarray(theta, np.float32), np.cumsum([v.numel() for v in sd.values()])[:-1])
    model.load_state_dict({k: torch.from_numpy(p.reshape(v.shape)) for (k, v), p in zip(sd.items(), parts)})
    loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return np.concatenate([g.numpy().astype(np.float64).ravel() for g in grads])


@pytest.mark.parametrize("rule", ["reference", "byzfl"])
def test_f0_monna_is_the_plain_average_of_half_steps(rule):
    """Differential: f = 0, two rounds (momentum carried, lr decayed) == mean of h_i by hand."""
    lr, beta, tau = 0.3, 0.5, 2.0
    cfg = monna_cfg(f"f: 0, lr: {lr}, beta: {beta}, lr_decay: {tau}, rule: {rule}")
    grid, wrapper, arrays = start(cfg)
    theta = flat(arrays.to_numpy_ndarrays())
    moms = {c: 0.0 for c in range(10)}
    for rnd in (1, 2):
        _, arrays = one_round(grid, wrapper, rnd, arrays)
        lr_t = lr / ((rnd - 1) / tau + 1)  # lr_t = lr0 / (t/tau + 1)
        halves = []
        for c in range(10):
            moms[c] = beta * moms[c] + (1 - beta) * hand_gradient(cfg, c, rnd, theta)
            halves.append(theta - lr_t * moms[c])
        theta = np.mean(halves, axis=0)
        for c in range(10):
            np.testing.assert_allclose(wrapper.inner.models[c], theta, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(flat(arrays.to_numpy_ndarrays()), theta, rtol=1e-5, atol=1e-6)


def test_each_client_is_sent_its_own_model_in_its_own_message():
    cfg = monna_cfg("f: 2, lr: 0.3, beta: 0.9")
    grid, wrapper, arrays = start(cfg)
    one_round(grid, wrapper, 1, arrays)
    strategy = wrapper.inner
    msgs = list(wrapper.configure_train(2, arrays, ConfigRecord(), grid))
    assert len(msgs) == 10 and len({id(m.content) for m in msgs}) == 10
    sent = {}
    for m in msgs:
        client = wrapper.context.node_to_client[m.metadata.dst_node_id]
        sent[client] = flat(m.content.array_records["arrays"].to_numpy_ndarrays())
        np.testing.assert_array_equal(sent[client], strategy.models[client])
        np.testing.assert_array_equal(flat(wrapper.context.base[m.metadata.dst_node_id]), sent[client])
        cfg_rec = m.content.config_records["config"]
        assert cfg_rec["fedsim.task"] == "monna" and cfg_rec["monna.beta"] == 0.9 and cfg_rec["fedsim.round"] == 2
    assert len({v.tobytes() for v in sent.values()}) > 1  # NNA gives clients different models


def test_honest_model_accuracy_is_reported_and_attackers_are_excluded(tmp_path):
    cfg = monna_cfg("f: 2, lr: 0.3, beta: 0.9", "rounds=2", "attack={name: sign_flip, clients: [3, 8]}")
    grid, wrapper, arrays = start(cfg)
    one_round(grid, wrapper, 1, arrays)
    m = wrapper.inner.round_metrics
    assert 0 <= m["honest_accuracy_min"] <= m["honest_accuracy_mean"] <= m["honest_accuracy_max"] <= 1
    assert wrapper.inner.honest_clients() == [0, 1, 2, 4, 5, 6, 7, 9]
    # The server loop writes them into the metrics rows.
    from conftest import run_inprocess

    run_inprocess(cfg, tmp_path)
    rows = read_rows(tmp_path)[1:]
    assert all(r["honest_accuracy_mean"] is not None and r["honest_loss_mean"] > 0 for r in rows)


@pytest.mark.parametrize("attack, flip, sign", [(None, False, 1), (LabelFlip(), True, 1),
                                                (SignFlipOwn(), False, -1), (Gaussian(std=0.0), False, 0)])
def test_client_task_step_momentum_and_client_attacks(attack, flip, sign):
    """The task replies h - theta = -lr (1-beta) g (round 1), then -lr m with m carried in Context.state."""
    cfg = small_config("train.batch_size=16")
    InProcessGrid(app, 1)  # sets what Message() needs outside a ServerApp
    theta = Evaluator(cfg).initial_arrays()
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 3}, state=RecordDict(), run_config={})
    lr, beta = 0.2, 0.75

    def step(rnd, att):
        conf = ConfigRecord({"monna.lr": lr, "monna.beta": beta, "monna.local-steps": 1})
        msg = Message(RecordDict({"arrays": theta, "config": conf}), dst_node_id=1, message_type=MessageType.TRAIN)
        job = Job(message=msg, context=context, config=conf, spec=ClientSpec.from_config(cfg), round=rnd, client=3,
                  attack=att)
        payload, metrics = monna_task(job)
        assert metrics["num-examples"] > 0 and metrics["train-loss"] > 0
        return np.concatenate([payload[f"{i}.x"].astype(np.float64).ravel() for i in range(len(payload))])

    w0 = flat(theta.to_numpy_ndarrays())
    g1 = hand_gradient(cfg, 3, 1, w0, flip)
    np.testing.assert_allclose(step(1, attack), sign * -lr * (1 - beta) * g1, rtol=1e-4, atol=1e-7)
    if attack is None:  # momentum persisted: m = beta (1-beta) g1 + (1-beta) g2
        g2 = hand_gradient(cfg, 3, 2, w0)
        np.testing.assert_allclose(step(2, None), -lr * (beta * (1 - beta) * g1 + (1 - beta) * g2),
                                   rtol=1e-4, atol=1e-7)


def test_mix_round_hand_values():
    x = np.array([[0.0, 0], [1, 0], [2, 0], [3, 0], [100, 0]])
    pivots, thetas = mix_round(x, 1, rule="byzfl", forged=[4])
    assert pivots == [0, 1, 2, 3]
    np.testing.assert_allclose(thetas, [[1.5, 0]] * 4)  # n - f = 4 nearest: rows 0..3
    pivots, thetas = mix_round(x, 1, rule="reference", attackers=[4], rng=np.random.default_rng(0))
    assert pivots == [0, 1, 2, 3, 4]
    # Honest pivots hold 4 rows (own, the attacker's, 2 drawn) and average the 3 nearest: never 100.
    for i in range(4):
        assert thetas[i, 0] <= 3 and abs(3 * thetas[i, 0] - round(3 * thetas[i, 0])) < 1e-9
    assert thetas[4, 0] > 30  # the attacker's own mix keeps its row
    np.testing.assert_allclose(mix_round(x[:4], 0, rule="reference")[1], np.repeat(x[:4].mean(0)[None], 4, 0))


@pytest.mark.parametrize("params, match", [
    ({"f": -1, "lr": 0.1}, "f >= 0"),
    ({"f": 1, "lr": 0.1, "beta": 1.0}, "beta"),
    ({"f": 1, "lr": 0.0}, "lr0"),
    ({"f": 1, "lr": 0.1, "lr_decay": -1.0}, "decay"),
    ({"f": 1, "lr": 0.1, "rule": "nearest"}, "unknown NNA rule"),
    ({"f": 1, "lr": 0.1, "local_steps": 0}, "local_steps"),
])
def test_constructor_errors_say_why(params, match):
    with pytest.raises(ValueError, match=match):
        STRATEGIES.build("monna", params)


def test_nna_is_monna_without_momentum_and_run_time_checks():
    assert STRATEGIES.build("nna", {"f": 1, "lr": 0.1}).beta == 0.0
    with pytest.raises(PluginError, match="beta"):
        STRATEGIES.build("nna", {"f": 1, "lr": 0.1, "beta": 0.9})
    with pytest.raises(ValueError, match="clients_per_round = data.num_clients"):
        grid, wrapper, arrays = start(monna_cfg("f: 1, lr: 0.1", "clients_per_round=5"))
        wrapper.configure_train(1, arrays, ConfigRecord(), grid)
    with pytest.raises(ValueError, match="2f < n"):
        grid, wrapper, arrays = start(monna_cfg("f: 5, lr: 0.1"))
        wrapper.configure_train(1, arrays, ConfigRecord(), grid)
    with pytest.raises(ValueError, match="tolerates f=1 .* names 2"):
        build_wrapper(monna_cfg("f: 1, lr: 0.1", "attack={name: sign_flip, count: 2}"))
