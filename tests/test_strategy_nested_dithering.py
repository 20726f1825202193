"""ndqsg-nested: the maths on toy clients, then whole runs on the in-process grid (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_inprocess, small_config
from flwr.app import ArrayRecord, ConfigRecord

from fedsim.clients.app import app
from fedsim.codecs import PayloadError, TensorInfo
from fedsim.codecs.buckets import n_buckets
from fedsim.codecs.dithered import Dqsg
from fedsim.codecs.model import contexts, decode_update, encode_update, init_states, tensor_infos
from fedsim.codecs.nested import Ndqsg
from fedsim.codecs.packing import packed_nbytes
from fedsim.engine.inprocess import InProcessGrid
from fedsim.engine.server import build_wrapper, discover
from fedsim.engine.wrapper import sample_clients
from fedsim.keys import CODEC_KEY
from fedsim.metrics import read_rows
from fedsim.strategies.nested_dithering import (
    NestedDitheredQuantization,
    bits_per_coordinate,
    decode_nested_group,
    reference_codec,
    reference_group,
    repair_is_exact,
    weighted_mean,
)
from fedsim.wire import CONFIG, ROUND_KEY

MLP = [(64, 32), (32,), (32, 10), (10,)]  # the small MLP's tensor shapes (digits: 64 inputs)
NESTED = ["strategy.name=ndqsg-nested", "codec.name=ndqsg", "codec.params={m1: 3, m2: 1, bucket: 64}"]


# ------------------------------------------------------------------------- the maths


def test_reference_group_is_seeded_capped_and_rotates():
    clients = [3, 8, 11, 20, 41]
    a = reference_group(clients, 2, seed=0, server_round=1)
    assert a == reference_group(clients[::-1], 2, 0, 1) and len(a) == 2 and set(a) <= set(clients)
    assert reference_group(clients, 9, 0, 1) == clients  # capped at the number sampled
    seen = {c for r in range(1, 30) for c in reference_group(clients, 1, 0, r)}
    assert seen == set(clients)  # the role rotates over every client


def test_bits_per_coordinate_hand_values():
    assert bits_per_coordinate([100, 300], 400) == 8 * 400 / (2 * 400) == 4.0
    assert np.isnan(bits_per_coordinate([], 10))


def test_weighted_mean_is_fedavg():
    u = [[np.array([1.0, 2.0], np.float32)], [np.array([4.0, -1.0], np.float32)]]
    np.testing.assert_allclose(weighted_mean(u, [1, 2])[0], [3.0, 0.0])  # (1*[1,2] + 2*[4,-1]) / 3
    with pytest.raises(ValueError, match="positive weight"):
        weighted_mean(u, [1, 0])


def _encode(codec, g, client, infos):
    return encode_update(codec, [g], infos, init_states(codec, infos), seed=7, round_=3, client=client)[0]


def test_nested_group_decodes_to_dqsg_with_close_side_information_and_drops_far_clients():
    n = 8 * 64
    infos = [TensorInfo("w", (n,))]
    nested = Ndqsg(m1=3, m2=1, bucket=64)
    ref = reference_codec(nested)
    assert (ref.levels, ref.bucket, ref.scale_dtype) == (3, 64, "float32")
    rng = np.random.default_rng(0)
    mean = rng.standard_normal(n).astype(np.float32)
    close = {c: mean + np.float32(0.02) * rng.standard_normal(n).astype(np.float32) for c in (1, 2)}
    far = np.float32(0.1) * mean  # y/s reaches ~30 fine steps: out of range, visibly wrong
    payloads = {c: _encode(nested, g, c, infos) for c, g in close.items()} | {5: _encode(nested, far, 5, infos)}
    out = decode_nested_group(nested, payloads, infos, 7, 3, [mean], count=1, max_failure_fraction=0.0)
    assert sorted(out.accepted) == [1, 2] and out.rejected == [5]
    for c, g in close.items():  # exact: the very value DQSG would have decoded for the same dither
        want = decode_update(ref, _encode(ref, g, c, infos), infos, seed=7, round_=3, client=c)[0]
        np.testing.assert_array_equal(out.accepted[c][0], want)
    assert out.coordinates == 3 * n and 0 < out.detectable == out.failure_fraction * 3 * n


def test_repair_is_exact_hand_values():
    # b = ceil(alpha*M1) admissible indices on each side: 2b + 1 values over rho cosets
    assert repair_is_exact(Ndqsg(m1=3, m2=1, alpha=1 / 3))  # b = 1: 3 values, 3 cosets
    assert repair_is_exact(Ndqsg(m1=4, m2=1, alpha=0.25))  # b = 1: 3 values, 4 cosets
    assert not repair_is_exact(Ndqsg(m1=3, m2=1, alpha=0.4))  # b = 2: 5 values, 3 cosets
    assert not repair_is_exact(Ndqsg(m1=3, m2=1, alpha=1.0))  # b = 3: 7 values


def _far_client(alpha, estimator="unbiased"):
    """One nested client and a far-off side information y = -5g (out of range: detectable)."""
    n = 8 * 64
    infos = [TensorInfo("w", (n,))]
    nested = Ndqsg(m1=3, m2=1, alpha=alpha, bucket=64, estimator=estimator)
    g = np.random.default_rng(2).standard_normal(n).astype(np.float32)
    payloads = {4: _encode(nested, g, 4, infos)}
    part = {"sym": payloads[4]["0.sym"], "scale": payloads[4]["0.scale"]}
    truth = nested.decode_with_side_info(part, infos[0], contexts(1, 7, 3, 4)[0], g)  # y = g: always exact
    return nested, payloads, infos, g, truth


def test_exact_repair_keeps_a_client_with_detectable_failures_and_decodes_it_exactly():
    nested, payloads, infos, g, truth = _far_client(1 / 3)
    out = decode_nested_group(nested, payloads, infos, 7, 3, [-5 * g], count=1, max_failure_fraction=0.0)
    assert out.detectable > 0.1 * g.size  # many failures, all detectable ...
    assert list(out.accepted) == [4] and out.rejected == []  # ... and repaired: the client is kept
    np.testing.assert_array_equal(out.accepted[4][0], truth)


def test_inexact_repair_rejects_by_threshold_and_default_keeps_every_client():
    nested, payloads, infos, g, truth = _far_client(0.4)
    strict = decode_nested_group(nested, payloads, infos, 7, 3, [-5 * g], count=1, max_failure_fraction=0.0)
    assert strict.rejected == [4] and strict.detectable > 0
    default = NestedDitheredQuantization().client_failure_threshold
    assert default == 1.0
    kept = decode_nested_group(nested, payloads, infos, 7, 3, [-5 * g], count=1, max_failure_fraction=default)
    assert list(kept.accepted) == [4]
    assert not np.array_equal(kept.accepted[4][0], truth)  # some repairs land on the wrong member


@pytest.mark.parametrize("alpha, estimator, warns",
                         [(0.5, "mmse", True), (0.5, "unbiased", False), (1.0, "mmse", False)])
def test_mmse_with_alpha_below_one_warns_of_the_pull_towards_the_references(caplog, alpha, estimator, warns):
    cfg = small_config("strategy.name=ndqsg-nested", "codec.name=ndqsg",
                       f"codec.params={{m1: 3, m2: 1, alpha: {alpha}, estimator: {estimator}}}")
    with caplog.at_level("WARNING", logger="fedsim"):
        build_wrapper(cfg)
    assert ("leans towards the references" in caplog.text) == warns


def test_stale_side_information_counts_for_nothing_in_the_running_mean():
    n = 4 * 64
    infos = [TensorInfo("w", (n,))]
    nested = Ndqsg(m1=3, m2=1, bucket=64)
    g = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    stale = [g + np.float32(0.01)]
    payloads = {1: _encode(nested, g, 1, infos)}
    fresh = decode_nested_group(nested, payloads, infos, 7, 3, stale, count=0)
    assert list(fresh.accepted) == [1] and fresh.detectable == 0
    np.testing.assert_array_equal(fresh.side[0], fresh.accepted[1][0])  # y = the first accepted update
    np.testing.assert_array_equal(stale[0], g + np.float32(0.01))  # the caller's y is not modified
    kept = decode_nested_group(nested, payloads, infos, 7, 3, stale, count=1)  # y was one reference's
    np.testing.assert_allclose(kept.side[0], (stale[0] + fresh.accepted[1][0]) / 2, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kwargs, msg", [
    ({"reference_clients": 0}, "reference_clients >= 1"),
    ({"client_failure_threshold": 1.5}, "fraction"),
    ({"stale_failure_threshold": -0.1}, "fraction"),
])
def test_constructor_validates(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        NestedDitheredQuantization(**kwargs)


def test_the_run_codec_must_be_ndqsg():
    with pytest.raises(ValueError, match="needs codec ndqsg"):
        build_wrapper(small_config("strategy.name=ndqsg-nested", "codec.name=dqsg"))


def test_each_client_is_told_its_codec_and_validated_against_it():
    cfg = small_config(*NESTED, "strategy.params={reference_clients: 2}")
    grid = InProcessGrid(app, cfg.data.num_clients)
    wrapper = build_wrapper(cfg)
    wrapper.bind_nodes(discover(grid, list(grid.get_node_ids()), 10))
    arrays = ArrayRecord([np.zeros(s, np.float32) for s in MLP])
    msgs = list(wrapper.configure_train(1, arrays, ConfigRecord(), grid))
    codecs = {wrapper.context.node_to_client[m.metadata.dst_node_id]: json.loads(m.content[CONFIG][CODEC_KEY])
              for m in msgs}
    refs = [c for c, spec in codecs.items() if spec["name"] == "dqsg"]
    assert refs == reference_group(list(codecs), 2, cfg.seed, 1)
    assert all(spec == {"name": "ndqsg", "params": {"m1": 3, "m2": 1, "alpha": 1.0, "bucket": 64,
                                                      "scale_dtype": "float32", "estimator": "mmse"}}
               for c, spec in codecs.items() if c not in refs)
    infos = tensor_infos([(str(i), s) for i, s in enumerate(MLP)])
    update = [np.ones(s, np.float32) for s in MLP]
    strategy = wrapper.inner
    nested_client = next(c for c in codecs if c not in refs)
    dq = encode_update(Dqsg(3, 64), update, infos, init_states(Dqsg(3, 64), infos), cfg.seed, 1, refs[0])[0]
    view = wrapper.view()
    strategy.validate(dq, refs[0], view)
    with pytest.raises(PayloadError):
        strategy.validate(dq, nested_client, view)  # a dqsg payload from a nested client
    with pytest.raises(PayloadError, match="not sent"):
        strategy.validate(dq, 10_000, view)


# ------------------------------------------------------------------ runs in process


def _mlp_formula(bucket: int, base: int) -> float:
    """Bits per coordinate of one payload, by hand: packed symbols + a float32 scale per bucket."""
    nbytes = sum(packed_nbytes(int(np.prod(s)), base) + 4 * n_buckets(int(np.prod(s)), bucket) for s in MLP)
    return 8 * nbytes / sum(int(np.prod(s)) for s in MLP)


def test_run_learns_and_reports_bits_of_each_group(tmp_path):
    # digits' clients hold ~140 examples each: their updates differ by more than the nested code
    # tolerates (2-5 % detectable failures), so accept clients up to 10 % here
    cfg = small_config(*NESTED, "rounds=4", "clients_per_round=6", "strategy.params={client_failure_threshold: 0.1}")
    run_inprocess(cfg, tmp_path)
    rows = read_rows(tmp_path)
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"] + 0.3
    ref_bits, nested_bits = _mlp_formula(64, 7), _mlp_formula(64, 3)
    for r in rows[1:]:
        assert (r["reference_clients"], r["nested_clients"]) == (2, 4)
        assert r["reference_bits_per_coord"] == pytest.approx(ref_bits, rel=1e-12)
        assert r["nested_bits_per_coord"] == pytest.approx(nested_bits, rel=1e-12)
        coords = sum(int(np.prod(s)) for s in MLP)
        assert r["bits_per_coord"] == pytest.approx(8 * r["bytes_up"] / (6 * coords), rel=1e-12)
        assert r["side_info_stale"] == 0 and r["nested_accepted"] >= 3
        assert 0 < r["nested_failure_fraction"] < 0.1 and r["failure_estimate_loo"] is not None


class Lossy(InProcessGrid):
    """A grid that loses the training messages ``lose(round, client, codec name)`` names."""

    def __init__(self, *args, lose=lambda rnd, client, codec: False, **kwargs):
        super().__init__(*args, **kwargs)
        self.lose = lose
        self.partition = {node: i for i, node in enumerate(self.node_ids)}

    def push_messages(self, messages):
        keep = []
        for m in messages:
            cfg = m.content.config_records.get(CONFIG)
            if cfg is None or CODEC_KEY not in cfg or not self.lose(
                    cfg[ROUND_KEY], self.partition[m.metadata.dst_node_id], json.loads(cfg[CODEC_KEY])["name"]):
                keep.append(m)
        return super().push_messages(keep)


@pytest.mark.parametrize("threshold, alpha", [(0.0, 1.0), (1.0, 1.0), (0.0, 0.3333333333)])
def test_no_reference_client_skips_then_uses_stale_side_information(tmp_path, threshold, alpha):
    cfg = small_config(*NESTED, "rounds=3", "clients_per_round=6", f"codec.params.alpha={alpha}",
                       f"strategy.params={{stale_failure_threshold: {threshold}, client_failure_threshold: 1.0}}")
    grid = Lossy(app, cfg.data.num_clients, lose=lambda rnd, client, codec: rnd in (1, 3) and codec == "dqsg")
    run_inprocess(cfg, tmp_path, grid)
    r0, r1, r2, r3 = read_rows(tmp_path)
    # round 1: no reference and no earlier aggregate -> skipped, model kept, nested bytes counted
    assert (r1["round_skipped"], r1["reference_clients"], r1["nested_clients"]) == (1, 0, 4)
    assert r1["test_loss"] == r0["test_loss"] and r1["bytes_up"] > 0
    assert r1["nested_bits_per_coord"] == pytest.approx(_mlp_formula(64, 3))
    # round 2: normal
    assert (r2["round_skipped"], r2["side_info_stale"], r2["reference_clients"]) == (0, 0, 2)
    assert r2["test_loss"] != r1["test_loss"]
    # round 3: side information = round 2's aggregate, marked stale
    assert (r3["side_info_stale"], r3["reference_clients"], r3["nested_clients"]) == (1, 0, 4)
    assert r3["nested_failure_fraction"] > 0.0 and r3["bytes_up"] > 0
    if threshold == 0.0 and alpha == 1.0:  # failures above the threshold: nested discarded, model kept
        assert r3["nested_discarded"] == 4 and r3["nested_accepted"] == 0
        assert r3["test_loss"] == r2["test_loss"]
    else:  # below the threshold, or (alpha = 1/3) every failure repaired exactly
        assert r3["nested_accepted"] == 4 and r3["test_loss"] != r2["test_loss"]


def test_a_rejected_nested_payload_and_a_dropout_do_not_stop_the_round(tmp_path):
    seed, k = 0, 6
    chosen = sample_clients(seed, 1, range(10), k)
    refs = reference_group(chosen, 2, seed, 1)
    bad, gone = [c for c in chosen if c not in refs][:2]  # two nested clients of round 1
    cfg = small_config(*NESTED, "rounds=1", f"clients_per_round={k}", f"attack={{name: nan, clients: [{bad}]}}")
    grid = Lossy(app, cfg.data.num_clients, lose=lambda rnd, client, codec: client == gone)
    run_inprocess(cfg, tmp_path, grid)
    r0, r1 = read_rows(tmp_path)
    assert (r1["rejected"], r1["no_reply"], r1["replied"]) == (1, 1, 4)
    assert (r1["reference_clients"], r1["nested_clients"]) == (2, 2)
    assert r1["nested_accepted"] + r1["nested_discarded"] == 2 and r1["test_accuracy"] > r0["test_accuracy"]


# ----------------------------------------------------------------- one run through Ray


@pytest.mark.e2e
def test_fedsim_run_on_ray(tmp_path):
    import subprocess
    import sys

    args = [sys.executable, "-m", "fedsim.cli", "run", "configs/ndqsg_mnist.yaml", "--out", str(tmp_path)]
    for o in ("name=e2e", "data.name=digits", "data.num_clients=20", "clients_per_round=10", "rounds=3",
              "model.name=mlp", "model.params={hidden: 32}", "train.lr=0.1", "train.local_epochs=1",
              "codec.params.bucket=64", "strategy.params.client_failure_threshold=0.1", "output.plots=false",
              "data.partition={kind: iid}"):  # nested decoding's regime: clients' updates close to their mean
        args += ["--set", o]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (run_dir,) = list(tmp_path.glob("e2e-*"))
    rows = read_rows(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"] + 0.2
    for r in rows[1:]:
        assert (r["reference_clients"], r["nested_clients"], r["replied"]) == (2, 8, 10)
        assert r["reference_bits_per_coord"] == pytest.approx(_mlp_formula(64, 7))
        assert r["nested_bits_per_coord"] == pytest.approx(_mlp_formula(64, 3))
        assert r["nested_accepted"] >= 1
