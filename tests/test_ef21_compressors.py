"""Contractive compressors for EF21: hand-computed outputs, declared alpha holds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedsim.codecs.base import CodecContext, TensorInfo
from fedsim.codecs.dense import Fp16
from fedsim.codecs.dense import Identity as IdentityCodec
from fedsim.ef21.compressors import (
    CodecCompressor,
    Identity,
    TopK,
    blockwise_alpha,
    codec_alpha,
    empirical_alpha,
    scaled_unbiased_alpha,
)


def test_topk_hand_computed_with_tie_to_lower_index():
    C = TopK(2, 4)
    np.testing.assert_array_equal(C.compress(np.array([3.0, -5.0, 1.0, 5.0])), [0.0, -5.0, 0.0, 5.0])
    np.testing.assert_array_equal(TopK(1, 3).compress(np.array([2.0, -2.0, 1.0])), [2.0, 0.0, 0.0])
    assert C.alpha == 0.5
    assert C.bits(4) == 2 * (32 + 2)
    assert Identity().bits(4) == 128 and Identity().alpha == 1.0


@settings(max_examples=200, deadline=None)
@given(arrays(np.float64, st.integers(1, 40), elements=st.floats(-1e6, 1e6)), st.data())
def test_topk_contraction_and_positive_homogeneity(x, data):
    k = data.draw(st.integers(1, x.size))
    t = data.draw(st.floats(1e-3, 1e3))
    C = TopK(k, x.size)
    err = C.compress(x) - x
    assert err @ err <= (1 - C.alpha) * (x @ x) * (1 + 1e-12) + 1e-300  # ||C(x)-x||^2 <= (1-k/d)||x||^2
    np.testing.assert_allclose(C.compress(t * x), t * C.compress(x), rtol=1e-12, atol=0)


def test_topk_alpha_is_attained_on_flat_vectors():
    # every coordinate equal: exactly k/d of the energy is kept, so alpha = k/d is tight
    rng = np.random.default_rng(0)
    samples = [np.ones(10)] + [rng.standard_normal(10) for _ in range(50)]
    assert empirical_alpha(TopK(3, 10).compress, samples) == pytest.approx(0.3, rel=1e-12)


def test_alpha_rules_hand_computed():
    assert blockwise_alpha([0.5, 0.1, 1.0]) == 0.1
    assert scaled_unbiased_alpha(3.0) == 0.25
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        blockwise_alpha([0.0])
    with pytest.raises(ValueError, match="1 <= k <= d"):
        TopK(0, 3)
    with pytest.raises(ValueError, match="shape"):
        TopK(1, 3).compress(np.ones(4))


def test_codec_compressor_wraps_a_registered_codec():
    info = TensorInfo("w", (5,))
    ctx = CodecContext(seed=0, round=1, client=2, tensor=0)
    C = CodecCompressor(IdentityCodec(), info, ctx)
    assert C.alpha == 1.0 and codec_alpha(IdentityCodec(), info) == 1.0
    x = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    np.testing.assert_array_equal(C.compress(x), x)
    assert C.bits(5) == 5 * 32
    np.testing.assert_array_equal(C.last_payload["x"], x.astype(np.float32))  # what goes on the wire


def test_codec_without_alpha_or_with_state_is_refused():
    info = TensorInfo("w", (5,))
    ctx = CodecContext(seed=0, round=1, client=2, tensor=0)
    with pytest.raises(ValueError, match="contraction_alpha"):
        CodecCompressor(Fp16(), info, ctx)  # fp16 is not contractive for subnormals

    class Stateful(IdentityCodec):
        name = "stateful"

        def init(self, info):
            return {"memory": np.zeros(info.shape, np.float32)}

    with pytest.raises(ValueError, match="stateless"):
        CodecCompressor(Stateful(), info, ctx, alpha=1.0)

    class Declared(IdentityCodec):
        name = "declared"

        def contraction_alpha(self, info):
            return 0.25

    assert CodecCompressor(Declared(), info, ctx).alpha == 0.25
