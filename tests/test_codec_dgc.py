"""Deep Gradient Compression (Lin et al., ICLR 2018; fedsim.codecs.dgc): its invariants and schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.codecs.base import CodecContext, TensorInfo, validate_payload
from fedsim.codecs.dgc import (
    DGC,
    clip_by_norm,
    mask_sent,
    momentum_correction,
    sample_stride,
    sampled_threshold,
    select,
    warmup_density,
)
from fedsim.codecs.model import decode_update, encode_update, init_states, tensor_infos
from fedsim.codecs.sparse import num_selected
from fedsim.registry import CODECS


def ctx(round_: int = 1, client: int = 0, tensor: int = 0) -> CodecContext:
    return CodecContext(seed=3, round=round_, client=client, tensor=tensor)


def rand(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------- warm-up


def test_warmup_schedule_matches_algorithms_md() -> None:
    # the reference code's schedule: rho = 0.001, W = 5 -> 0.316, 0.1, 0.0316, 0.01, 0.00316, then 0.001
    got = [warmup_density(e, 0.001, 5) for e in range(8)]
    want = [0.316, 0.1, 0.0316, 0.01, 0.00316, 0.001, 0.001, 0.001]
    np.testing.assert_allclose(got, want, rtol=2e-3)
    assert got[1] == pytest.approx(0.1, rel=1e-12)  # c^2 = rho^(2/6) = 0.1 exactly
    assert warmup_density(0, 0.001, 0) == 0.001  # W = 0: no warm-up
    assert warmup_density(0, 0.01, 1) == pytest.approx(0.1)  # c = 0.01^(1/2)
    with pytest.raises(ValueError):
        warmup_density(-1, 0.001, 5)


def test_codec_round_indexing_starts_at_first_round() -> None:
    codec = DGC(0.001)  # first_round = 1, Flower's first server round
    assert codec.round_density(1) == pytest.approx(0.316, rel=2e-3)
    assert codec.round_density(6) == 0.001
    assert DGC(0.001, first_round=0).round_density(0) == pytest.approx(0.316, rel=2e-3)
    with pytest.raises(ValueError, match="first_round"):
        codec.round_density(0)


# ----------------------------------------------------------------- sampling


def test_sample_stride_hand_values() -> None:
    # target = max(ceil(1000 * 0.01), ceil(2 / 0.001)) = 2000 >= 1000: the whole tensor
    assert sample_stride(1000, 0.001, 0.01) == (1, 1000)
    # 10M: target 100000; stride ceil(100 / 32) * 32 + 1 = 129 -> 77519 samples, too few;
    # 121 -> 82644, 113 -> 88495, 105 -> 95238, 97 -> 103092 >= 100000
    assert sample_stride(10_000_000, 0.001, 0.01) == (97, 103092)
    assert sample_stride(5000, 0.5, 1.0) == (1, 5000)


class FixedStart:
    """A stand-in generator whose strided sample always starts at 0."""

    def integers(self, low: int, high: int) -> int:
        return 0


def test_threshold_lowered_by_0_8_when_too_few_pass() -> None:
    numel, density = 200_000, 0.02
    stride, n_s = sample_stride(numel, density, 0.01)  # target max(2000, 100): stride 97
    assert (stride, n_s) == (97, 2061)
    v = np.full(numel, 0.5, np.float32)
    v[0::stride] = np.linspace(1.0, 1.1, v[0::stride].size)  # 2062 "big" entries; the sample sees them
    k = num_selected(numel, density)  # 4000
    thr = sampled_threshold(np.abs(v), density, 0.01, FixedStart())  # type: ignore[arg-type]
    assert thr >= 1.09  # the 42nd largest of the sample: ~42 entries pass, fewer than 0.8k = 3200
    # retries: thr * 0.8^i keeps 2062 passing until thr * 0.8^4 < 0.5, where all 200000 pass
    # (> 1.3k): exact top-k of the passing set, which holds every big entry
    idx = select(v, density, FixedStart(), sample_ratio=0.01)  # type: ignore[arg-type]
    assert idx.size == k
    assert set(np.flatnonzero(v > 0.9).tolist()) <= set(idx.tolist())
    # only 2 retries: thr * 0.64 > 0.5, so only the 2062 big entries pass
    idx2 = select(v, density, FixedStart(), sample_ratio=0.01, max_iters=2)  # type: ignore[arg-type]
    assert idx2.tolist() == np.flatnonzero(v > 0.9).tolist()


def test_more_than_1_3k_pass_falls_back_to_exact_topk() -> None:
    v = np.ones(100_000, np.float32)  # all tie: every entry passes the sampled threshold
    v[12345] = 2.0
    idx = select(v, 0.001, np.random.default_rng(0))
    assert idx.size == 100 and 12345 in idx and np.all(np.diff(idx) > 0)


def test_sampled_selection_on_gaussian_is_near_k_and_the_largest() -> None:
    v = rand((1000, 1000), 4).reshape(-1)
    k = num_selected(v.size, 0.001)
    idx = select(v, 0.001, np.random.default_rng(1))
    assert 0.8 * k <= idx.size <= k
    mags = np.abs(v)
    rest = np.ones(v.size, bool)
    rest[idx] = False
    assert mags[idx].min() >= mags[rest].max()  # whatever count, the sent are the largest


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 40), min_size=2, max_size=3).map(tuple),
    density=st.floats(0.001, 0.9),
    seed=st.integers(0, 9999),
)
def test_exactly_k_when_the_sample_covers_the_tensor(shape: tuple[int, ...], density: float, seed: int) -> None:
    v = rand(shape, seed).reshape(-1)
    idx = select(v, density, np.random.default_rng(seed), sample_ratio=1.0)
    assert idx.size == num_selected(v.size, density)
    mags = np.abs(v)
    rest = np.setdiff1d(np.arange(v.size), idx)
    if rest.size:
        assert mags[idx].min() >= mags[rest].max()


# ----------------------------------------------------------------- steps


def test_clip_by_norm_hand_values() -> None:
    np.testing.assert_allclose(clip_by_norm(np.array([3.0, 4.0], np.float32), 1.0), [0.6, 0.8], rtol=1e-5)
    g = np.array([0.3, 0.4], np.float32)
    assert clip_by_norm(g, 1.0) is g  # norm 0.5 < 1: untouched


def test_momentum_and_masking_steps_hand_values() -> None:
    u = np.array([1.0, 2.0], np.float32)
    v = np.array([0.5, 0.0], np.float32)
    g = np.array([1.0, -1.0], np.float32)
    u2, v2 = momentum_correction(u, v, g, 0.5)
    np.testing.assert_allclose(u2, [1.5, 0.0])  # 0.5 * u + g
    np.testing.assert_allclose(v2, [2.0, 0.0])  # v + u
    u3, v3 = momentum_correction(u, v, g, 0.5, correction=False)
    assert u3 is u
    np.testing.assert_allclose(v3, [1.5, -1.0])  # v + g
    um, vm = mask_sent(u2, v2, np.array([0]), np.array([2.0], np.float32))
    np.testing.assert_allclose(um, [0.0, 0.0])
    np.testing.assert_allclose(vm, [0.0, 0.0])
    np.testing.assert_allclose(u2, [1.5, 0.0])  # inputs untouched


def test_two_rounds_hand_computed() -> None:
    codec = DGC(0.25, momentum=0.5, warmup_rounds=0, sample_ratio=1.0)  # k = 1 of 4
    info = TensorInfo("w", (2, 2))
    s = codec.init(info)
    p, s = codec.encode(np.array([[1, -3], [2, 0.5]], np.float32), s, ctx(1))
    assert p["idx"].tolist() == [1] and p["val"].tolist() == [-3.0]
    np.testing.assert_allclose(s["v"].reshape(-1), [1, 0, 2, 0.5])
    np.testing.assert_allclose(s["u"].reshape(-1), [1, 0, 2, 0.5])
    p, s = codec.encode(np.ones((2, 2), np.float32), s, ctx(2))
    # u = 0.5 * [1, 0, 2, .5] + 1 = [1.5, 1, 2, 1.25]; v = [2.5, 1, 4, 1.75] -> send index 2
    assert p["idx"].tolist() == [2] and p["val"].tolist() == [4.0]
    np.testing.assert_allclose(s["u"].reshape(-1), [1.5, 1, 0, 1.25])
    np.testing.assert_allclose(s["v"].reshape(-1), [2.5, 1, 0, 1.75])


# ----------------------------------------------------------------- DGC invariants


@pytest.mark.parametrize("shape", [(6, 5), (7,)])
def test_density_one_without_clipping_is_dense_momentum_sgd(shape: tuple[int, ...]) -> None:
    m, lr = 0.9, 0.1
    codec = DGC(1.0, momentum=m)
    info = TensorInfo("w", shape)
    state = codec.init(info)
    w_dgc = np.zeros(shape, np.float32)
    w_ref = np.zeros(shape, np.float32)
    u_ref = np.zeros(shape, np.float32)
    for r in range(1, 8):
        g = rand(shape, r)
        payload, state = codec.encode(g, state, ctx(r))
        validate_payload(codec, payload, info)
        w_dgc -= lr * codec.decode(payload, info, ctx(r))
        u_ref = m * u_ref + g  # momentum SGD: u = m u + g; w = w - lr u
        w_ref -= lr * u_ref
        np.testing.assert_allclose(w_dgc, w_ref, rtol=1e-6, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(2, 30), min_size=2, max_size=3).map(tuple),
    density=st.floats(0.005, 0.5),
    momentum=st.floats(0.0, 0.95),
    masking=st.booleans(),
    values=st.sampled_from(["float32", "float16"]),
    coding=st.sampled_from(["uint32", "delta-varint"]),
    seed=st.integers(0, 9999),
)
def test_conservation_and_masking(
    shape: tuple[int, ...], density: float, momentum: float, masking: bool, values: str, coding: str, seed: int
) -> None:
    """v_before + u = v_after + sent each round; u = 0 where sent (masking); <= k sent."""
    codec = DGC(density, momentum=momentum, momentum_masking=masking, warmup_rounds=2,
                values=values, index_coding=coding)
    info = TensorInfo("w", shape)
    state = codec.init(info)
    for r in range(1, 5):
        g = rand(shape, seed + r)
        u_new = np.float32(momentum) * state["u"] + g  # u after the momentum step
        v_before = state["v"]
        payload, state = codec.encode(g, state, ctx(r))
        validate_payload(codec, payload, info)
        sent = codec.decode(payload, info, ctx(r))
        np.testing.assert_allclose(v_before + u_new, state["v"] + sent, rtol=1e-5, atol=1e-5)
        idx = codec.format.indices(payload, info)
        assert idx.size <= num_selected(g.size, codec.round_density(r))
        if masking:
            assert np.all(state["u"].reshape(-1)[idx] == 0)
        else:
            np.testing.assert_allclose(state["u"], u_new, rtol=1e-6)
        if values == "float32":
            assert np.all(state["v"].reshape(-1)[idx] == 0)


def test_without_momentum_correction_accumulates_raw_updates() -> None:
    codec = DGC(0.1, momentum_correction=False, warmup_rounds=0, sample_ratio=1.0)
    info = TensorInfo("w", (10, 10))
    state = codec.init(info)
    total = np.zeros((10, 10), np.float32)
    sent = np.zeros((10, 10), np.float32)
    for r in range(1, 4):
        g = rand((10, 10), r)
        total += g
        p, state = codec.encode(g, state, ctx(r))
        sent += codec.decode(p, info, ctx(r))
        assert p["val"].size == 10
    assert not state["u"].any()
    np.testing.assert_allclose(total, sent + state["v"], atol=1e-5)  # plain error feedback


def test_clipping_bounds_the_sent_norm() -> None:
    codec = DGC(1.0, momentum=0.0, clip_norm=2.0, num_clients=4)  # max norm 2 / sqrt(4) = 1
    info = TensorInfo("w", (5, 5))
    g = 10 * rand((5, 5))
    p, _ = codec.encode(g, codec.init(info), ctx())
    out = codec.decode(p, info, ctx())
    assert np.linalg.norm(out) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(out / np.linalg.norm(out), g / np.linalg.norm(g), atol=1e-6)


@pytest.mark.parametrize(
    "params, reason",
    [
        ({"density": 0.0}, "density must be in"),
        ({"momentum": 1.0}, "momentum must be in"),
        ({"clip_norm": 1.0}, "needs num_clients"),
        ({"clip_norm": -1.0, "num_clients": 3}, "clip_norm must be > 0"),
        ({"warmup_rounds": -1}, "warmup_rounds"),
        ({"sample_ratio": 0.0}, "sample_ratio"),
        ({"lower": 1.0}, "lower"),
        ({"values": "bfloat16"}, "values"),
    ],
)
def test_constructor_says_why(params: dict[str, float], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        DGC(**params)  # type: ignore[arg-type]


def test_model_round_trip_dense_small_and_state_store_shape() -> None:
    infos = tensor_infos([("conv.weight", (16, 1, 5, 5)), ("conv.bias", (16,)), ("fc.weight", (10, 400))])
    codec = CODECS.build("dgc", {"density": 0.01, "index_coding": "delta-varint"})
    states = init_states(codec, infos)
    assert all(set(s) == {"u", "v"} for s in states)
    for r in range(1, 4):
        update = [rand(i.shape, r * 10 + j) for j, i in enumerate(infos)]
        flat, states = encode_update(codec, update, infos, states, seed=1, round_=r, client=2)
        assert set(flat) == {"0.idx", "0.val", "1.x", "2.idx", "2.val"}
        out = decode_update(codec, flat, infos, seed=1, round_=r, client=2)
        assert [o.shape for o in out] == [i.shape for i in infos]
        assert flat["2.val"].size <= math.ceil(4000 * codec.round_density(r))


def test_fedavg_with_dgc_learns_a_quadratic() -> None:
    """Three clients, f_k(w) = |w - c_k|^2 / 2 with c_k = c + 0.1 * noise_k; pseudo-gradient
    of 5 local GD steps at lr 0.02 (about 0.1 (c_k - w)).

    FedAvg with DGC at density 0.02 (default momentum, masking, warm-up) must get within a
    tenth of the starting distance to the optimum mean(c_k) in 300 rounds. (Error feedback
    leaves a noise floor when clients differ, and needs the per-round step small against the
    density: with 5 steps at lr 0.1 this problem does not converge; see the module docstring.)
    """
    rng = np.random.default_rng(0)
    shape = (20, 50)
    base = rng.standard_normal(shape).astype(np.float32)
    centers = [base + 0.1 * rng.standard_normal(shape).astype(np.float32) for _ in range(3)]
    target = np.mean(centers, axis=0)
    codec = DGC(0.02)
    info = TensorInfo("w", shape)
    states = [codec.init(info) for _ in centers]
    w = np.zeros(shape, np.float32)
    d0 = np.linalg.norm(w - target)
    for r in range(1, 301):
        agg = np.zeros(shape, np.float32)
        for k, c in enumerate(centers):
            local = w.copy()
            for _ in range(5):
                local -= 0.02 * (local - c)
            p, states[k] = codec.encode(local - w, states[k], ctx(r, k))
            agg += codec.decode(p, info, ctx(r, k)) / 3
        w = w + agg
    assert np.linalg.norm(w - target) < d0 / 8
