"""The registered ``line_search`` attack: factor searched against a named rule."""

import numpy as np
import pytest

from fedsim.registry import ATTACKS


def test_alie_against_the_mean_takes_the_largest_factor():
    # harm = |mean([honest; forged]) - mean(honest)| = (f/n) c |std|: increasing in c
    attack = ATTACKS.build("line_search", {"attack": "alie", "against": "mean", "candidates": [0.5, 3.0, 1.0]})
    honest = np.random.default_rng(0).normal(size=(8, 4))
    forged = attack.forge(honest, 2, np.random.default_rng(1))
    assert attack.last_factor == 3.0
    np.testing.assert_allclose(forged, np.repeat((honest.mean(0) + 3.0 * honest.std(0, ddof=1))[None], 2, 0))


def test_foe_against_nna_avoids_the_factors_nna_filters():
    # FOE with c far from 1 lands far from every honest row and is dropped; the search
    # must prefer a factor that keeps the forged rows among the honest ones (c near 0).
    attack = ATTACKS.build("line_search", {"attack": "foe", "against": "nna", "rule": "byzfl",
                                           "candidates": [-20.0, 0.05, 20.0]})
    honest = 10 + np.random.default_rng(0).normal(size=(9, 5))
    attack.forge(honest, 2, np.random.default_rng(1))
    assert attack.last_factor == 0.05


def test_unknown_attack_or_rule_is_an_error():
    with pytest.raises(ValueError, match="supports attacks alie, foe, ipm"):
        ATTACKS.build("line_search", {"attack": "mimic", "against": "mean"})
    with pytest.raises(ValueError, match="unknown aggregator"):
        ATTACKS.build("line_search", {"attack": "alie", "against": "average"})
