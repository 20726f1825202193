"""Sparse payload, topk, randk and error feedback (fedsim.codecs.sparse)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.codecs.base import CodecContext, EmptyState, PayloadError, TensorInfo, payload_nbytes, validate_payload
from fedsim.codecs.model import decode_update, encode_update, init_states, tensor_infos
from fedsim.codecs.sparse import (
    ErrorFeedback,
    ErrorFeedbackState,
    RandK,
    SparseFormat,
    TopK,
    num_selected,
    randk,
    scatter_add,
    topk,
    topk_indices,
    varint_decode,
    varint_encode,
)
from fedsim.registry import CODECS, PluginError

CTX = CodecContext(seed=7, round=1, client=3, tensor=0)


def rand(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------- hand-computed values


@pytest.mark.parametrize(
    "numel, density, k",
    [(100, 0.1, 10), (30, 0.1, 3), (1000, 0.001, 1), (10, 0.001, 1), (7, 1.0, 7), (1001, 0.001, 2), (0, 0.5, 0)],
)
def test_num_selected_is_ceil_of_numel_times_density(numel: int, density: float, k: int) -> None:
    assert num_selected(numel, density) == k


def test_topk_indices_hand_values() -> None:
    a = np.array([0.1, -5.0, 3.0, 0.0, -4.0], dtype=np.float32)
    assert topk_indices(a, 2).tolist() == [1, 4]
    assert topk_indices(a, 0).tolist() == []
    assert topk_indices(a, 9).tolist() == [0, 1, 2, 3, 4]


def test_varint_known_bytes() -> None:
    # 0 -> 00; 127 -> 7f; 128 -> 80 01; 300 = 0b10_0101100 -> ac 02
    out = varint_encode(np.array([0, 127, 128, 300]))
    assert out.tolist() == [0x00, 0x7F, 0x80, 0x01, 0xAC, 0x02]
    assert varint_decode(out).tolist() == [0, 127, 128, 300]
    big = np.array([2**32 - 1, 2**21, 2**28 - 1], dtype=np.uint64)
    assert varint_decode(varint_encode(big)).tolist() == big.tolist()


def test_varint_rejects_malformed() -> None:
    with pytest.raises(PayloadError, match="continuation"):
        varint_decode(np.array([0x80], dtype=np.uint8))
    with pytest.raises(PayloadError, match="longer than 5"):
        varint_decode(np.array([0x80] * 5 + [0x01], dtype=np.uint8))


def test_delta_varint_payload_is_smaller_and_decodes_the_same() -> None:
    x = rand((1000, 100))
    ctx = CTX
    p32 = TopK(0.001).encode(x, {}, ctx)[0]
    pv = TopK(0.001, index_coding="delta-varint").encode(x, {}, ctx)[0]
    info = TensorInfo("w", x.shape)
    assert payload_nbytes(pv) < payload_nbytes(p32) == 100 * 8
    np.testing.assert_array_equal(TopK(0.001).decode(p32, info, ctx),
                                  TopK(0.001, index_coding="delta-varint").decode(pv, info, ctx))


# ----------------------------------------------------------------- validation


def _sparse_payload(idx: list[int], val: list[float], coding: str = "uint32") -> dict[str, np.ndarray]:
    fmt = SparseFormat("float32", coding)
    if coding == "uint32":
        return {"idx": np.array(idx, dtype=np.uint32), "val": np.array(val, dtype=np.float32)}
    return fmt.pack(np.array(idx), np.array(val, dtype=np.float32))


INFO = TensorInfo("w", (4, 5))


@pytest.mark.parametrize(
    "idx, val, reason",
    [
        ([0, 20], [1.0, 2.0], "above 19"),  # out of range
        ([3, 3], [1.0, 2.0], "strictly increasing"),  # duplicate
        ([5, 2], [1.0, 2.0], "strictly increasing"),  # unsorted
        ([1, 2, 3], [1.0, 2.0], "pair up"),  # mismatched lengths
        (list(range(20)) + [0], [0.0] * 21, "at most 20"),  # too many
        ([1, 2], [1.0, np.nan], "non-finite"),
    ],
)
def test_uint32_validation_rejects(idx: list[int], val: list[float], reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        validate_payload(TopK(0.1), _sparse_payload(idx, val), INFO)


def test_varint_validation_rejects_out_of_range_and_mismatch() -> None:
    codec = TopK(0.1, index_coding="delta-varint")
    validate_payload(codec, _sparse_payload([0, 19], [1.0, 2.0], "delta-varint"), INFO)
    beyond = {"idx": varint_encode(np.array([5, 14])), "val": np.ones(2, np.float32)}  # 5, 20
    with pytest.raises(PayloadError, match="outside"):
        validate_payload(codec, beyond, INFO)
    with pytest.raises(PayloadError, match="pair up"):
        validate_payload(codec, {"idx": varint_encode(np.array([1, 1])), "val": np.ones(3, np.float32)}, INFO)
    with pytest.raises(PayloadError, match="beyond"):
        validate_payload(codec, {"idx": varint_encode(np.array([25])), "val": np.ones(1, np.float32)}, INFO)


def test_validation_rejects_wrong_dtype_and_keys() -> None:
    with pytest.raises(PayloadError, match="dtype"):
        validate_payload(TopK(0.1), {"idx": np.array([1], np.int64), "val": np.ones(1, np.float32)}, INFO)
    with pytest.raises(PayloadError, match="missing"):
        validate_payload(TopK(0.1), {"x": np.zeros((4, 5), np.float32)}, INFO)


def test_fp16_overflow_is_refused_by_the_encoder() -> None:
    x = np.zeros((3, 3), np.float32)
    x[1, 1] = 1e6
    with pytest.raises(PayloadError, match="float16"):
        TopK(0.5, values="float16").encode(x, {}, CTX)


def test_registry_builds_and_rejects_unknown_params() -> None:
    assert {"topk", "randk", "dgc"} <= set(CODECS.names())
    assert isinstance(CODECS.build("topk"), ErrorFeedback)
    assert isinstance(CODECS.build("topk", {"error_feedback": False}), TopK)
    with pytest.raises(PluginError, match="unknown parameter"):
        CODECS.build("topk", {"densty": 0.1})
    with pytest.raises(ValueError, match="density must be in"):
        topk(density=0.0)
    with pytest.raises(ValueError, match="contractive"):
        randk(error_feedback=True, scale=True)
    with pytest.raises(ValueError, match="index_coding"):
        TopK(0.1, index_coding="int64")


# ----------------------------------------------------------------- properties


shapes = st.lists(st.integers(1, 12), min_size=2, max_size=3).map(tuple)


@settings(max_examples=60, deadline=None)
@given(
    shape=shapes,
    density=st.floats(0.01, 1.0),
    values=st.sampled_from(["float32", "float16"]),
    coding=st.sampled_from(["uint32", "delta-varint"]),
    seed=st.integers(0, 2**16),
)
def test_topk_round_trip_property(shape: tuple[int, ...], density: float, values: str, coding: str, seed: int) -> None:
    x = rand(shape, seed)
    codec = TopK(density, values=values, index_coding=coding)
    info = TensorInfo("w", shape)
    payload, _ = codec.encode(x, {}, CTX)
    validate_payload(codec, payload, info)
    y = codec.decode(payload, info, CTX)
    assert y.shape == shape and y.dtype == np.float32
    sent = np.flatnonzero(y.reshape(-1) != 0)
    k = num_selected(x.size, density)
    assert payload["val"].size == k
    atol = 0 if values == "float32" else 2e-3 * float(np.abs(x).max())
    np.testing.assert_allclose(y.reshape(-1)[sent], x.reshape(-1)[sent], atol=atol, rtol=0)
    mags = np.abs(x.reshape(-1))
    kept = codec.format.indices(payload, info)
    unsent = np.setdiff1d(np.arange(x.size), kept)
    if unsent.size:  # the sent are the k largest
        assert mags[kept].min() >= mags[unsent].max()


@settings(max_examples=30, deadline=None)
@given(shape=shapes, density=st.floats(0.05, 0.5), values=st.sampled_from(["float32", "float16"]),
       seed=st.integers(0, 999))
def test_error_feedback_conservation(shape: tuple[int, ...], density: float, values: str, seed: int) -> None:
    """sum_t x_t = sum_t decode(p_t) + e_T: nothing is lost."""
    codec = topk(density=density, values=values)
    info = TensorInfo("w", shape)
    state = codec.init(info)
    total_x = np.zeros(shape, np.float64)
    total_sent = np.zeros(shape, np.float64)
    for t in range(5):
        x = rand(shape, seed * 10 + t)
        e_before = state.e.copy()
        payload, state = codec.encode(x, state, CTX)
        sent = codec.decode(payload, info, CTX)
        np.testing.assert_allclose(x + e_before, sent + state.e, atol=1e-6)  # per step
        total_x += x
        total_sent += sent
    np.testing.assert_allclose(total_x, total_sent + state.e, atol=1e-5)


def test_topk_without_error_feedback_is_stateless() -> None:
    codec = topk(density=0.1, error_feedback=False)
    assert codec.init(INFO) == EmptyState() and not codec.init(INFO)
    x = rand((4, 5))
    p, s = codec.encode(x, EmptyState(), CTX)
    assert s == EmptyState() and p["val"].size == 2


def test_small_tensors_go_dense() -> None:
    b = rand((7,))
    for codec in (topk(), randk(), TopK(0.1, values="float16")):
        info = TensorInfo("b", (7,))
        state = codec.init(info)
        p, _ = codec.encode(b, state, CTX)
        assert set(p) == {"x"}
        validate_payload(codec, p, info)
        np.testing.assert_allclose(codec.decode(p, info, CTX), b, rtol=1e-3)
    p, _ = TopK(0.1, dense_small=False).encode(b, {}, CTX)
    assert set(p) == {"idx", "val"} and p["val"].size == 1


def test_randk_unbiased_by_seeded_monte_carlo() -> None:
    """E[decode(randk(x))] = x with scale d/k: mean of 4000 seeded draws within 5 sigma."""
    x = rand((5, 10), 1)
    codec = randk(density=0.2)
    info = TensorInfo("w", x.shape)
    draws = 4000
    acc = np.zeros(x.shape, np.float64)
    for r in range(draws):
        ctx = CodecContext(seed=11, round=r, client=0, tensor=0)
        acc += codec.decode(codec.encode(x, {}, ctx)[0], info, ctx)
    mean = acc / draws
    sigma = np.abs(x) * np.sqrt(1 / 0.2 - 1) / np.sqrt(draws)  # sd of x_j * B * d/k, B~Bern(k/d)
    assert np.all(np.abs(mean - x) <= 5 * sigma + 1e-6)
    # unscaled is biased toward 0 by k/d
    c0 = randk(density=0.2, scale=False)
    m0 = np.mean([c0.decode(c0.encode(x, {}, CodecContext(11, r, 0, 0))[0], info, CodecContext(11, r, 0, 0))
                  for r in range(2000)], axis=0)
    np.testing.assert_allclose(m0, 0.2 * x, atol=float(np.abs(x).max()) * 0.05)


def test_randk_positions_are_rebuilt_from_the_context() -> None:
    x = rand((20, 30), 2)
    info = TensorInfo("w", x.shape)
    full = RandK(0.05)
    seeded = RandK(0.05, seeded_indices=True)
    p_full, _ = full.encode(x, {}, CTX)
    p_seed, _ = seeded.encode(x, {}, CTX)
    assert set(p_seed) == {"val"} and payload_nbytes(p_seed) * 2 == payload_nbytes(p_full)
    validate_payload(seeded, p_seed, info)
    np.testing.assert_array_equal(seeded.decode(p_seed, info, CTX), full.decode(p_full, info, CTX))
    other = CodecContext(7, 2, 3, 0)
    assert not np.array_equal(full.encode(x, {}, other)[0]["idx"], p_full["idx"])


def test_model_level_round_trip_and_sparse_aggregation() -> None:
    infos = tensor_infos([("conv.weight", (8, 3, 3, 3)), ("conv.bias", (8,)), ("fc.weight", (10, 72))])
    codec = CODECS.build("topk", {"density": 0.05, "index_coding": "delta-varint"})
    decoded = []
    for client in range(3):
        states = init_states(codec, infos)
        update = [rand(i.shape, client * 3 + j) for j, i in enumerate(infos)]
        flat, states = encode_update(codec, update, infos, states, seed=5, round_=1, client=client)
        assert set(flat) == {"0.idx", "0.val", "1.x", "2.idx", "2.val"}
        assert isinstance(states[0], ErrorFeedbackState) and states[0].inner == EmptyState()
        decoded.append(decode_update(codec, flat, infos, seed=5, round_=1, client=client))
        # scatter_add on the raw payload equals the dense decode
        acc = np.zeros(infos[2].shape, np.float32)
        idx = codec.inner.format.indices({"idx": flat["2.idx"], "val": flat["2.val"]}, infos[2])
        np.testing.assert_array_equal(scatter_add(acc, idx, flat["2.val"]), decoded[-1][2])
    acc = np.zeros(infos[0].shape, np.float32)
    for d in decoded:
        scatter_add(acc, np.flatnonzero(d[0]), d[0].reshape(-1)[np.flatnonzero(d[0])], weight=1 / 3)
    np.testing.assert_allclose(acc, np.mean([d[0] for d in decoded], axis=0), atol=1e-6)
