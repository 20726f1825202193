"""Flower's FedProx (with the proximal term in both trainers), QFedAvg and the DP wrappers,
registered in fedsim: the client maths by hand, and each strategy run in process against a
reference it must equal."""

import numpy as np
import pytest
from conftest import small_config
from flwr.app import ConfigRecord

from fedsim.clients import numpy_trainer as nt
from fedsim.clients.tasks import proximal_mu
from fedsim.registry import STRATEGIES, PluginError

# digits, an MLP, 6 clients, 3 a round, 2 rounds, in process; batches as large as a client's
# data so every client takes the same number of steps (FedAvg weighted by "steps" = unweighted)
TINY = ("simulation.backend=inprocess", "rounds=2", "data.num_clients=6", "clients_per_round=3",
        "model.params={hidden: 16}", "train.batch_size=1000", "train.local_epochs=3")


def run(tmp_path, *sets):
    import fedsim

    return fedsim.run(small_config(*TINY, *sets), out=tmp_path)


def test_every_strategy_of_this_issue_is_registered():
    names = set(STRATEGIES.names())
    assert {"fedprox", "qfedavg", "dp-fixed-server", "dp-adaptive-server", "dp-fixed-client",
            "dp-adaptive-client"} <= names


# ---------------------------------------------------------------------- FedProx, client side


def test_numpy_proximal_term_by_hand():
    """Two full-batch steps: p1 = p0 - lr g(p0); p2 = p1 - lr (g(p1) + mu (p1 - p0))."""
    rng = np.random.default_rng(0)
    p0 = nt.init_params("logreg", 5, 3, seed=1)
    x = rng.random((8, 5)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    lr, mu = 0.5, 2.0
    got, _ = nt.train(p0, x, y, epochs=2, batch_size=8, lr=lr, seed=0, proximal_mu=mu)
    _, g0 = nt.loss_and_grads(p0, x, y)
    p1 = {k: p0[k] - lr * g0[k] for k in p0}  # the anchor term is 0 at the first step
    _, g1 = nt.loss_and_grads(p1, x, y)
    p2 = {k: p1[k] - lr * (g1[k] + mu * (p1[k] - p0[k])) for k in p0}
    for k in p0:
        np.testing.assert_allclose(got[k], p2[k], rtol=1e-5, atol=1e-6)
    plain, _ = nt.train(p0, x, y, epochs=2, batch_size=8, lr=lr, seed=0)
    assert not np.allclose(plain["linear.weight"], got["linear.weight"])
    with pytest.raises(ValueError, match="proximal_mu"):
        nt.train(p0, x, y, epochs=1, batch_size=8, lr=lr, seed=0, proximal_mu=-1.0)


def test_torch_and_numpy_proximal_terms_agree():
    """Differential: the same proximal SGD (momentum, weight decay) in torch and numpy."""
    torch = pytest.importorskip("torch", reason="the differential test needs torch")
    from fedsim.clients import torch_trainer as tt
    from fedsim.models import build_model

    rng = np.random.default_rng(1)
    x = rng.random((24, 1, 4, 4)).astype(np.float32)
    y = rng.integers(0, 3, 24)
    p0 = nt.init_params("mlp", 16, 3, seed=2, hidden=8)
    model = build_model("mlp", {"hidden": 8}, (1, 4, 4), 3, seed=0)
    tt.set_weights(model, list(p0.values()))
    kw = dict(epochs=3, batch_size=24, lr=0.3, momentum=0.5, weight_decay=0.01)
    tt.train(model, x, y, seed=0, proximal_mu=0.7, **kw)
    ref, _ = nt.train(p0, x, y, seed=0, proximal_mu=0.7, **kw)
    for got, (name, want) in zip(tt.get_weights(model), ref.items()):
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5, err_msg=name)
    assert torch.get_num_threads() >= 1


def test_proximal_mu_from_the_message_config():
    assert proximal_mu(ConfigRecord({})) == 0.0
    assert proximal_mu(ConfigRecord({"proximal-mu": 0.25})) == 0.25
    for bad in (-1.0, float("inf"), "x"):
        with pytest.raises(ValueError, match="proximal-mu"):
            proximal_mu(ConfigRecord({"proximal-mu": bad}))


# ---------------------------------------------------------------------- strategies, in process


def test_fedprox_mu_zero_is_fedavg_and_mu_changes_the_run(tmp_path):
    fedavg = run(tmp_path / "a", "strategy.name=fedavg")
    prox0 = run(tmp_path / "b", "strategy={name: fedprox, params: {proximal_mu: 0.0}}")
    prox = run(tmp_path / "c", "strategy={name: fedprox, params: {proximal_mu: 5.0}}")
    assert prox0.column("test_loss") == fedavg.column("test_loss")
    assert prox.column("test_loss")[1:] != fedavg.column("test_loss")[1:]
    # the proximal term pulls every client towards the model it received: smaller updates
    assert prox.summary["final_loss"] > fedavg.summary["final_loss"]


def test_qfedavg_with_q_zero_is_the_unweighted_mean(tmp_path):
    """q = 0: delta_k = L (w - w_k), h_k = L, so w - sum delta_k / sum h_k = mean_k w_k, which is
    FedAvg weighted by a key equal for every client ("steps": one batch per epoch here)."""
    q0 = run(tmp_path / "q", "strategy={name: qfedavg, params: {q: 0.0, client_learning_rate: 0.1}}")
    mean = run(tmp_path / "m", "strategy={name: fedavg, params: {weighted_by_key: steps}}")
    np.testing.assert_allclose(q0.column("test_loss"), mean.column("test_loss"), rtol=1e-5)
    q1 = run(tmp_path / "q1", "strategy={name: qfedavg, params: {q: 1.0, client_learning_rate: 0.1}}")
    assert q1.column("test_loss")[1:] != q0.column("test_loss")[1:]


def test_dp_server_fixed_clipping_on_decoded_updates(tmp_path):
    """No noise and a norm no update reaches: FedAvg exactly. A tiny norm: the model barely moves,
    with a lossy codec as well (clipping acts on the update the server decoded)."""
    base = run(tmp_path / "f", "strategy.name=fedavg")
    wide = run(tmp_path / "w", "strategy={name: dp-fixed-server, params: {noise_multiplier: 0.0, "
                               "clipping_norm: 1.0e6, num_sampled_clients: 3}}")
    np.testing.assert_allclose(wide.column("test_loss"), base.column("test_loss"), rtol=1e-6)
    tight = run(tmp_path / "t", "codec={name: qsgd, params: {levels: 1}}",
                "strategy={name: dp-fixed-server, params: {noise_multiplier: 0.0, clipping_norm: 1.0e-6, "
                "num_sampled_clients: 3, strategy: {name: fedavg}}}")
    losses = tight.column("test_loss")
    assert abs(losses[-1] - losses[0]) < 1e-4 < abs(base.column("test_loss")[-1] - losses[0])


def test_dp_server_adaptive_clipping_runs_and_adapts(tmp_path):
    res = run(tmp_path, "strategy={name: dp-adaptive-server, params: {noise_multiplier: 0.0, num_sampled_clients: 3, "
                        "initial_clipping_norm: 0.5}}")
    assert res.summary["rounds"] == 2 and res.summary["final_accuracy"] is not None
    built = STRATEGIES.build("dp-adaptive-server", {"noise_multiplier": 0.1, "num_sampled_clients": 3,
                                                    "strategy": {"name": "fedmedian"}})
    assert type(built.strategy).__name__ == "FedMedian"


def test_combinations_that_cannot_work_say_why():
    with pytest.raises(PluginError, match="client-side DP.*'dp-fixed-server'"):
        STRATEGIES.build("dp-fixed-client", {"noise_multiplier": 1.0, "clipping_norm": 1.0, "num_sampled_clients": 3})
    with pytest.raises(PluginError, match="'dp-adaptive-server'"):
        STRATEGIES.build("dp-adaptive-client", {})
    with pytest.raises(PluginError, match="decodes client payloads itself"):
        STRATEGIES.build("dp-fixed-server", {"noise_multiplier": 1.0, "clipping_norm": 1.0, "num_sampled_clients": 3,
                                             "strategy": {"name": "ef21", "params": {"k": 1}}})
    with pytest.raises(PluginError, match="name"):
        STRATEGIES.build("dp-fixed-server", {"noise_multiplier": 1.0, "clipping_norm": 1.0, "num_sampled_clients": 3,
                                             "strategy": {"params": {}}})


def test_client_side_dp_in_a_run_is_one_line_exit_2():
    from typer.testing import CliRunner

    from fedsim.cli import app

    res = CliRunner().invoke(app, ["run", "configs/quickstart.yaml", "--set", "simulation.backend=inprocess",
                                   "--set", "network=null", "--set", "rounds=1", "--set",
                                   "strategy={name: dp-fixed-client, params: {}}", "--out", "/tmp/fedsim-never"])
    last = res.output.strip().splitlines()[-1]
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert last.startswith("error:") and "fixedclipping_mod" in res.output
