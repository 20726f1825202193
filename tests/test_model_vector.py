"""model_vector / split_vector: the one flatten/split of a model's tensors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.codecs.model import model_vector, split_vector

shapes = st.lists(st.lists(st.integers(0, 4), max_size=3).map(tuple), max_size=5)


@settings(max_examples=200, deadline=None)
@given(shapes, st.integers(0, 2**32 - 1))
def test_split_inverts_model_vector(shape_list, seed):
    rng = np.random.default_rng(seed)
    tensors = [rng.standard_normal(s).astype(np.float32) for s in shape_list]
    vec = model_vector(tensors)
    assert vec.shape == (sum(t.size for t in tensors),)
    back = split_vector(vec, shape_list)
    assert [b.shape for b in back] == [tuple(s) for s in shape_list]
    for a, b in zip(tensors, back):
        np.testing.assert_array_equal(a, b)


def test_model_vector_order_and_dtype():
    vec = model_vector([np.array([[1, 2], [3, 4]]), np.array([5.5])], dtype=np.float64)
    assert vec.dtype == np.float64
    np.testing.assert_array_equal(vec, [1, 2, 3, 4, 5.5])


def test_split_vector_refuses_a_wrong_length():
    with pytest.raises(ValueError, match="5 numbers cannot hold tensors of 6"):
        split_vector(np.zeros(5), [(2, 3)])
