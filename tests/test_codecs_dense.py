import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedsim.codecs import PayloadError, payload_nbytes, validate_payload
from fedsim.codecs.base import CodecContext, EmptyState, TensorInfo
from fedsim.codecs.dense import Fp16, Identity
from fedsim.codecs.model import decode_update, encode_update, init_states, tensor_infos, unflatten, validate_update

CTX = CodecContext(seed=0, round=1, client=2, tensor=0)
shapes = hnp.array_shapes(min_dims=1, max_dims=3, max_side=6)


@given(x=hnp.arrays(np.float32, shapes, elements=st.floats(-1e4, 1e4, width=32)))
@settings(max_examples=50, deadline=None)
def test_identity_round_trip_is_exact(x):
    info = TensorInfo("t", x.shape)
    p, _ = Identity().encode(x, {}, CTX)
    validate_payload(Identity(), p, info)
    out = Identity().decode(p, info, CTX)
    assert out.dtype == np.float32 and np.array_equal(out, x)
    assert payload_nbytes(p) == 4 * x.size


@given(x=hnp.arrays(np.float32, shapes, elements=st.floats(-6e4, 6e4, width=32)))
@settings(max_examples=50, deadline=None)
def test_fp16_round_trip_error_bound(x):
    info = TensorInfo("t", x.shape)
    p, _ = Fp16().encode(x, {}, CTX)
    validate_payload(Fp16(), p, info)
    out = Fp16().decode(p, info, CTX)
    # half precision: relative error <= 2**-11 in the normal range, absolute <= 2**-25 below it
    assert np.all(np.abs(out - x) <= np.maximum(np.abs(x) * 2.0**-11, 2.0**-24))
    assert payload_nbytes(p) == 2 * x.size


def test_fp16_refuses_values_out_of_range():
    with pytest.raises(PayloadError, match="float16 range"):
        Fp16().encode(np.array([7e4], np.float32), {}, CTX)


INFO = TensorInfo("w", (2, 3))


@pytest.mark.parametrize("payload, reason", [
    ({"x": np.full((2, 3), np.nan, np.float32)}, "non-finite"),
    ({"x": np.full((2, 3), np.inf, np.float32)}, "non-finite"),
    ({"x": np.zeros((3, 2), np.float32)}, "shape"),
    ({"x": np.zeros((2, 3), np.float64)}, "dtype float64"),
    ({"x": np.zeros((2, 3), np.float32), "y": np.zeros(1, np.float32)}, "unexpected \\['y'\\]"),
    ({}, "missing \\['x'\\]"),
])
def test_validation_rejects_with_reason(payload, reason):
    with pytest.raises(PayloadError, match=reason):
        validate_payload(Identity(), payload, INFO)


def test_model_level_round_trip_and_keys():
    infos = tensor_infos([("a.weight", (3, 2)), ("a.bias", (3,))])
    codec = Fp16()
    update = [np.arange(6, dtype=np.float32).reshape(3, 2), np.array([1, -2, 3], np.float32)]
    payload, states = encode_update(codec, update, infos, init_states(codec, infos), 0, 1, 2)
    assert sorted(payload) == ["0.x", "1.x"] and states == [EmptyState(), EmptyState()]
    out = decode_update(codec, payload, infos, 0, 1, 2)
    assert all(np.array_equal(o, u) for o, u in zip(out, update))


@pytest.mark.parametrize("key", ["2.x", "x", "a.x", "0."])
def test_model_level_rejects_foreign_keys(key):
    infos = tensor_infos([("a", (1,)), ("b", (1,))])
    with pytest.raises(PayloadError, match="unexpected payload key"):
        unflatten({key: np.zeros(1, np.float32)}, 2)
    with pytest.raises(PayloadError):
        validate_update(Identity(), {"0.x": np.zeros(1, np.float32), key: np.zeros(1, np.float32)}, infos)


def test_context_rng_is_reproducible_and_separates_streams():
    a = CodecContext(1, 2, 3, 4).rng("dither").random(4)
    b = CodecContext(1, 2, 3, 4).rng("dither").random(4)
    c = CodecContext(1, 2, 3, 4).rng("sample").random(4)
    d = CodecContext(1, 2, 4, 4).rng("dither").random(4)
    assert np.array_equal(a, b) and not np.allclose(a, c) and not np.allclose(a, d)
