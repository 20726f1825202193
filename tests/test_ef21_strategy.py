"""EF21 / EF21-W through fedsim: the strategy, the ``ef21`` client task, the wire, in process.

Differential tests against the pure-numpy reference (fedsim.ef21.reference) on the
papers' problem (``logreg-ncvx`` on ``digits-binary``), the invariant
``g == sum_i w_i g_i`` (= (1/n) sum_i h_i) read from the strategy and the clients'
Flower contexts after every round, EF21-PP with sampling, dropouts and rejected
replies, and the payload checks.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_inprocess, small_config
from flwr.app import ConfigRecord

from fedsim.clients.app import app
from fedsim.codecs.base import PayloadError
from fedsim.config import ClientSpec
from fedsim.ef21.client import from_arrays
from fedsim.ef21.compressors import TopK
from fedsim.ef21.oracles import LogRegProblem, TorchProblem, local_problem
from fedsim.ef21.reference import logreg_oracles, run_ef21
from fedsim.engine.inprocess import InProcessGrid
from fedsim.engine.server import Evaluator, build_wrapper, discover
from fedsim.metrics import read_rows
from fedsim.problems.logreg import smoothness
from fedsim.state import ContextStore
from fedsim.strategies.ef21w import EF21W, l_am, smoothness_weights

D = 65  # digits: 8x8 pixels + bias


def ef21_config(strategy: str = "ef21w", *overrides: str, **params):
    p = {k: v for k, v in {"compressor": "topk", "k": 3, "dtype": "float64", **params}.items() if v is not None}
    flow = "{" + ", ".join(f"{k}: {v}" for k, v in p.items()) + "}"
    return small_config("data.name=digits-binary", "model.name=logreg-ncvx", "model.params={}",
                        "data.num_clients=6", "clients_per_round=6", "eval_every=1000",
                        f"strategy.name={strategy}", f"strategy.params={flow}", *overrides)


class Run:
    """The server loop, by hand, so that the state can be read after every round."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.grid = InProcessGrid(app, cfg.data.num_clients)
        self.wrapper = build_wrapper(cfg)
        self.wrapper.bind_nodes(discover(self.grid, list(self.grid.get_node_ids()), 10))
        self.arrays = Evaluator(cfg).initial_arrays()
        self.strategy: EF21W = self.wrapper.inner
        self.rnd = 0

    def round(self):
        self.rnd += 1
        msgs = list(self.wrapper.configure_train(self.rnd, self.arrays, ConfigRecord(), self.grid))
        new, _ = self.wrapper.aggregate_train(self.rnd, self.grid.send_and_receive(msgs))
        self.arrays = new if new is not None else self.arrays
        return self.strategy

    def client_states(self):
        d = self.strategy.x.size
        return {self.wrapper.context.node_to_client[node]: from_arrays(ContextStore(ctx).load(), d)
                for node, ctx in self.grid.contexts.items()}

    def check_invariant(self):
        """g == (1/n) sum_i h_i, with h_i as the server knows it (acked messages committed)."""
        s = self.strategy
        h = {c: st.h + (st.pending if st.pending_round >= 0 and st.pending_round == s.acked[c] else 0.0)
             for c, st in self.client_states().items()}
        np.testing.assert_allclose(s.g, np.mean([h[c] for c in s.clients], axis=0), rtol=1e-12, atol=1e-14)
        if s.plan is not None:  # ... = sum_i w_i g_i with g_i = h_i / (n w_i)
            g_i = [h[c] / (len(s.clients) * w) for c, w in zip(s.clients, s.plan.weights)]
            np.testing.assert_allclose(s.g, sum(w * gi for w, gi in zip(s.plan.weights, g_i)), rtol=1e-12, atol=1e-14)


def parts_of(cfg):
    """The clients' (A_i, b_i) exactly as the ef21 task sees them."""
    probs = [local_problem(ClientSpec.from_config(cfg), c) for c in range(cfg.data.num_clients)]
    assert all(isinstance(p, LogRegProblem) for p in probs)
    return [(p.A, p.b) for p in probs]


# ---------------------------------------------------------------- differential tests


def test_identity_compressor_is_gradient_descent():
    cfg = ef21_config("ef21", compressor="identity")
    run, parts = Run(cfg), parts_of(cfg)
    L = [smoothness(A) for A, _ in parts]
    x = np.zeros(D)
    for _ in range(12):
        s = run.round()
        assert s.plan.gamma == pytest.approx(1.0 / l_am(L), rel=1e-12)  # alpha = 1: gamma = 1/L
        x = x - s.plan.gamma * np.mean([LogRegProblem(A, b, 0.1).loss_grad(x)[1] for A, b in parts], axis=0)
        np.testing.assert_allclose(s.x, x, rtol=0, atol=1e-6 * max(1.0, np.abs(x).max()))
    assert np.abs(s.x).max() > 1e-2  # it moved


@pytest.mark.parametrize("strategy,weights", [("ef21", None), ("ef21w", "smoothness")])
def test_topk_through_fedsim_equals_the_reference_loop(tmp_path, strategy, weights):
    cfg = ef21_config(strategy, "data.partition.kind=shards", "data.partition.shards_per_client=1",
                      "rounds=15", multiplier=4)
    summary_dir = tmp_path / strategy
    run_inprocess(cfg, summary_dir)
    rows = read_rows(summary_dir)[1:]
    parts = parts_of(cfg)
    L = [smoothness(A) for A, _ in parts]
    gamma = rows[0]["ef21_gamma"]
    w = smoothness_weights(L) if weights else None
    ref = run_ef21(logreg_oracles(parts), np.zeros(D), gamma, 15, compressor=TopK(3, D), weights=w)
    np.testing.assert_allclose([r["grad_norm_sq"] for r in rows], ref.grad_norm_sq[1:], rtol=1e-9)
    assert rows[0]["ef21_L_am"] == pytest.approx(l_am(L), rel=1e-12)
    assert rows[0]["ef21_L_qm"] > rows[0]["ef21_L_am"] * 1.01  # the shards split spreads the L_i


def test_equal_L_make_ef21w_equal_ef21_and_topk_iterates_agree_at_the_same_step():
    equal = [Run(ef21_config(s, L_i=[2.5] * 6)) for s in ("ef21", "ef21w")]
    spread = [Run(ef21_config(s, "data.partition.kind=shards", "data.partition.shards_per_client=1", theory="am"))
              for s in ("ef21", "ef21w")]
    for _ in range(8):
        a, b = (r.round() for r in equal)
        np.testing.assert_array_equal(a.x, b.x)  # same weights, same step: the very same run
        a, b = (r.round() for r in spread)
        assert a.plan.gamma == b.plan.gamma and not np.allclose(b.plan.weights, 1 / 6)
        np.testing.assert_allclose(a.x, b.x, rtol=1e-10, atol=1e-13)  # Top-k is positively homogeneous


def test_invariant_after_every_round_and_grad_norm_decreases(tmp_path):
    run = Run(ef21_config("ef21w", multiplier=4, dtype="float32"))
    norms = []
    for _ in range(10):
        run.round()
        run.check_invariant()
        norms.append(run.strategy.round_metrics["grad_norm_sq"])
    assert all(b < a for a, b in zip(norms, norms[1:])), norms


def test_partial_participation_dropouts_and_rejections_keep_the_invariant():
    # 3 of 6 clients a round; one node drops out for rounds 2-5; client 4 sends NaN and
    # is rejected every round (so start from g_i = 0 with the L_i given, EF21-PP style).
    cfg = ef21_config("ef21w", "clients_per_round=3", "attack={name: nan, clients: [4]}",
                      start="zero", L_i=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], multiplier=2, batch_size=20)
    run = Run(cfg)
    node0 = next(n for n, c in run.wrapper.context.node_to_client.items() if c == 0)
    lost = 0
    for rnd in range(1, 13):
        run.grid.down = {node0} if 2 <= rnd <= 5 else set()
        before = {c: st.h.copy() for c, st in run.client_states().items()} if rnd > 1 else {}
        s = run.round()
        run.check_invariant()
        assert s.acked[4] == -1  # never added
        if 0 in s._sent and 2 <= rnd <= 5:
            lost += 1
            assert s.acked[0] != rnd  # sampled, dropped out, not added
        for c in set(s.clients) - set(s._sent) if before else ():  # absent clients keep g_i
            np.testing.assert_array_equal(run.client_states()[c].h, before[c])
    assert lost >= 1 and s.steps == 12 and max(s.acked.values()) == 12


def test_dense_start_waits_for_every_first_message_under_partial_participation():
    run = Run(ef21_config("ef21w", "clients_per_round=2", multiplier=2))
    x0 = np.zeros(D)  # logreg-ncvx starts at 0
    while True:
        s = run.round()
        run.check_invariant()
        if min(s.acked.values()) < 0:
            assert s.steps == 0 and s.plan is None and np.array_equal(s.x, x0)
        else:
            break
    assert s.steps == 1 and s.plan is not None  # all L_i known, g^0 complete: first step


def test_data_size_weights_and_the_codec_compressor():
    cfg = ef21_config("ef21w", "data.partition.kind=dirichlet", "data.partition.alpha=1.0",
                      "codec={name: topk, params: {density: 0.1, error_feedback: false}}",
                      compressor="codec", weights="data-size", k=None)
    run = Run(cfg)
    for _ in range(4):
        run.round()
        run.check_invariant()
    s = run.strategy
    m = np.array([s.m_known[c] for c in s.clients])
    np.testing.assert_allclose(s.plan.weights, m / m.sum())
    assert s.wire.alpha == pytest.approx(7 / 64)  # topk codec on the (1, 64) weight: ceil(6.4)/64; bias dense
    assert s.round_metrics["ef21_alpha"] == pytest.approx(7 / 64)


# ------------------------------------------------------------------ payload checks


def test_validate_update_checks_what_was_asked_for():
    run = Run(ef21_config("ef21w"))
    s = run.round()  # round 1: dense first messages
    run.wrapper.configure_train(2, run.arrays, ConfigRecord(), run.grid)  # round 2: top-3 asked
    view = run.wrapper.view()
    good = {"ef21.idx": np.array([1, 5, 64], np.uint32), "ef21.val": np.ones(3)}
    s.validate(good, 0, view)
    bad = [
        {"ef21.x": np.zeros(D)},  # dense where compressed is expected
        {**good, "ef21.val": np.ones(3, np.float32)},  # float32 on a float64 run
        {**good, "ef21.idx": np.array([5, 1, 6], np.uint32)},  # not ascending
        {**good, "ef21.idx": np.array([1, 5, 65], np.uint32)},  # out of range
        {**good, "ef21.val": np.array([1.0, np.nan, 0.0])},
        {**good, "ef21.extra": np.zeros(1)},
    ]
    for payload in bad:
        with pytest.raises(PayloadError):
            s.validate(payload, 0, view)
    with pytest.raises(PayloadError, match="not sent"):
        s.validate(good, 99, view)


@pytest.mark.parametrize("params,match", [
    ({"compressor": "topk"}, "needs an integer k"),
    ({"compressor": "zip"}, "compressor must be"),
    ({"start": "warm", "k": 1}, "start must be"),
    ({"step": 0.1, "multiplier": 2.0, "k": 1}, "not both"),
])
def test_constructor_says_why(params, match):
    with pytest.raises(ValueError, match=match):
        EF21W(**params)


def test_ef21_refuses_weights_and_stateful_or_undeclared_codecs():
    from fedsim.registry import STRATEGIES

    with pytest.raises(ValueError, match="equal weights"):
        STRATEGIES.build("ef21", {"weights": "smoothness", "k": 1})
    for codec, match in [("{name: topk, params: {density: 0.1}}", "keeps state"),
                         ("{name: qsgd}", "contraction_alpha")]:
        run = Run(ef21_config("ef21w", f"codec={codec}", compressor="codec", k=None))
        with pytest.raises(ValueError, match=match):
            run.round()


# ------------------------------------------------------------------ the local problems


def test_torch_oracle_equals_numpy_oracle_and_client_L_is_exact():
    cfg = ef21_config("ef21w")
    from fedsim.clients.trainer import _torch_model
    from fedsim.data.datasets import load_dataset, load_partition

    ds = load_dataset(cfg.data, cfg.seed)
    x, y = load_partition(cfg.data, cfg.seed, 2)
    model = _torch_model(cfg.model.model_dump_json(), ds.input_shape, ds.num_classes)
    torch_p, np_p = TorchProblem(model, x, y), LogRegProblem.from_images(x, y, 0.1)
    z = np.random.default_rng(0).standard_normal(D) * 0.3
    (ft, gt), (fn, gn) = torch_p.loss_grad(z), np_p.loss_grad(z)
    assert ft == pytest.approx(fn, rel=1e-12)
    np.testing.assert_allclose(gt, gn, rtol=1e-10, atol=1e-13)
    # power iteration at z is a local value: never above the global bound L_i
    assert 0 < torch_p.smoothness(z) <= np_p.smoothness(z) * (1 + 1e-9)
    run = Run(cfg)
    s = run.round()
    assert s.L_known[2] == pytest.approx(smoothness(np_p.A), rel=1e-12)


def test_any_model_runs_with_power_iteration_smoothness():
    cfg = small_config("data.name=digits", "data.num_clients=3", "clients_per_round=3", "model.params={hidden: 4}",
                       "eval_every=1000", "strategy.name=ef21", "strategy.params={compressor: topk, k: 20}")
    run = Run(cfg)
    norms = []
    for _ in range(3):
        norms.append(run.round().round_metrics["grad_norm_sq"])
        run.check_invariant()
    assert run.strategy.plan.L_am > 0 and norms[-1] < norms[0]


@pytest.mark.parametrize("name", ["ef21w_mnist5k", "ef21_mnist5k", "ef21w_pp_mnist5k"])
def test_configs_load_and_name_known_plugins(name):
    from fedsim.config import check_plugins, load_config

    cfg = load_config(f"configs/{name}.yaml")
    check_plugins(cfg)
    assert cfg.strategy.name in ("ef21", "ef21w") and cfg.model.name == "logreg-ncvx"


def test_an_old_checkpoint_start_restores_into_start_mode_and_keeps_flowers_start(tmp_path):
    """A checkpoint saved before ``start`` was renamed ``start_mode`` holds ``start``: it
    restores into ``start_mode``, and Flower's ``Strategy.start`` (the round loop) stays."""
    from flwr.serverapp.strategy import Strategy

    from fedsim.checkpoint import load_state, object_state, restore_object_state, save_state

    arrays, tree = object_state(EF21W(k=2, start="zero"))
    assert tree.pop("start_mode") == "zero"
    old = {"start": "zero", **tree}  # what the older EF21W saved
    s = EF21W(k=2)
    assert s.start_mode == "dense"
    restore_object_state(s, arrays, old)
    assert s.start_mode == "zero" and "start" not in vars(s)
    assert type(s).start is s.start.__func__ is Strategy.start
    save_state(tmp_path, "strategy", s)  # and a new checkpoint of it holds start_mode only
    assert "start" not in object_state(s)[1]
    fresh = EF21W(k=2)
    load_state(tmp_path, "strategy", fresh)
    assert fresh.start_mode == "zero" and fresh.start.__func__ is Strategy.start
