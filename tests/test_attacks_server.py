"""The one server-side attack path (:mod:`fedsim.attacks.server`): hand-computed forgeries."""

from __future__ import annotations

import numpy as np

from fedsim.attacks.byzantine import ALIE, SignFlip
from fedsim.attacks.server import ATTACK_STREAM, attack_rng, forge_updates, forge_vectors


def test_sign_flip_forges_minus_the_honest_mean_for_the_attackers_present():
    vectors = {0: np.array([1.0, 2.0]), 1: np.array([9.0, 9.0]), 2: np.array([3.0, 4.0]), 5: np.array([7.0, 7.0])}
    forged = forge_vectors(SignFlip(), {1, 5, 8}, vectors, seed=3, server_round=2, dtype=np.float32)
    assert sorted(forged) == [1, 5]  # attacker 8 sent nothing this round
    for row in forged.values():
        assert row.dtype == np.float32
        np.testing.assert_array_equal(row, [-2.0, -3.0])
    assert vectors[1].tolist() == [9.0, 9.0]  # the input is left alone


def test_nothing_is_forged_without_an_attack_an_attacker_or_an_honest_client():
    v = {0: np.ones(2), 1: np.zeros(2)}
    assert forge_vectors(None, {1}, v, 0, 1, np.float64) == {}
    assert forge_vectors(SignFlip(), set(), v, 0, 1, np.float64) == {}
    assert forge_vectors(SignFlip(), {0, 1}, v, 0, 1, np.float64) == {}


def test_per_tensor_updates_are_forged_on_the_flat_vector_and_split_back():
    updates = {0: [np.array([[1.0, 2.0]], np.float32), np.array([3.0], np.float32)],
               1: [np.array([[9.0, 9.0]], np.float32), np.array([9.0], np.float32)],
               2: [np.array([[3.0, 4.0]], np.float32), np.array([5.0], np.float32)]}
    forged = forge_updates(SignFlip(), {1}, updates, [(1, 2), (1,)], seed=0, server_round=1)
    np.testing.assert_array_equal(forged[1][0], [[-2.0, -3.0]])
    np.testing.assert_array_equal(forged[1][1], [-4.0])


def test_the_randomness_is_one_stream_of_seed_and_round():
    a = attack_rng(7, 3).standard_normal(4)
    np.testing.assert_array_equal(a, np.random.default_rng([7, 3, ATTACK_STREAM]).standard_normal(4))
    assert not np.array_equal(a, attack_rng(7, 4).standard_normal(4))
    v = {c: np.random.default_rng(c).standard_normal(5) for c in range(6)}
    assert all(np.array_equal(x, y) for x, y in zip(forge_vectors(ALIE(), {4, 5}, v, 7, 3, np.float64).values(),
                                                   forge_vectors(ALIE(), {4, 5}, v, 7, 3, np.float64).values()))
