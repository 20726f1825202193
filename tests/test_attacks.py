"""Byzantine attacks (fedsim.attacks.byzantine): each attack on a hand-made input, where
each runs, the ALIE factor, the mimic heuristic and the line search."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedsim.attacks import ClientAttack, ServerAttack
from fedsim.attacks.byzantine import (
    ALIE,
    FOE,
    IPM,
    Gaussian,
    LabelFlip,
    Mimic,
    SignFlip,
    SignFlipOwn,
    alie_z_max,
    mimic_init,
    mimic_target,
    mimic_update,
)
from fedsim.attacks.line_search import LineSearchAttack, line_search
from fedsim.registry import ATTACKS, PluginError
from fedsim.robust.aggregators import mean, trimmed_mean
from fedsim.robust.nna import nna_aggregator

# mean [3, 3]; coordinate-wise std (ddof=1) [2, 3]
H = np.array([[1.0, 0.0], [3.0, 3.0], [5.0, 6.0]])
RNG = np.random.default_rng(0)


def forged(attack: ServerAttack, f: int = 2, honest: np.ndarray = H) -> np.ndarray:
    out = attack.forge(honest, f, np.random.default_rng(0))
    assert out.shape == (f, honest.shape[1])
    assert np.all(out == out[0]), "all Byzantine rows send the same vector"
    return out[0]


def test_sign_flip_hand() -> None:
    np.testing.assert_allclose(forged(SignFlip()), [-3.0, -3.0])


def test_alie_hand() -> None:
    np.testing.assert_allclose(forged(ALIE(c=1.5)), [3 + 1.5 * 2, 3 + 1.5 * 3])


def test_foe_ipm_hand() -> None:
    np.testing.assert_allclose(forged(FOE(c=3.0)), [-6.0, -6.0])  # (1 - 3) * 3
    np.testing.assert_allclose(forged(IPM(eps=0.1)), [-0.3, -0.3])
    np.testing.assert_allclose(forged(IPM(eps=0.5)), forged(FOE(c=1.5)))  # IPM(eps) = FOE(1+eps)


def test_mimic_hand() -> None:
    np.testing.assert_allclose(forged(Mimic(target=1)), [3.0, 3.0])
    a = Mimic()  # target drawn from the round's rng on the first call, then kept
    first = forged(a)
    assert a.target_ is not None and np.array_equal(first, H[a.target_])
    assert np.array_equal(a.forge(H, 1, np.random.default_rng(99))[0], first)
    with pytest.raises(ValueError, match="out of range"):
        Mimic(target=5).forge(H, 1, RNG)


def _phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_alie_z_max() -> None:
    # n=26, f=5 (the paper's MNIST setting): s = floor(26/2 + 1) - 5 = 9, Phi(z) = 17/26
    z = alie_z_max(26, 5)
    assert _phi(z) == pytest.approx(17 / 26, abs=1e-9)
    assert alie_z_max(50, 24) == pytest.approx(1.7507, abs=1e-4)  # s = 2, Phi^-1(0.96)
    # default c: honest n_h = 21 and f = 5 -> n = 26
    honest = np.random.default_rng(1).normal(size=(21, 3))
    np.testing.assert_allclose(forged(ALIE(), f=5, honest=honest),
                               honest.mean(0) + z * honest.std(0, ddof=1))
    with pytest.raises(ValueError, match="0 < f < n"):
        alie_z_max(10, 0)
    with pytest.raises(ValueError, match="unbounded"):
        alie_z_max(10, 6)


def test_mimic_heuristic_finds_the_spread_direction() -> None:
    rng = np.random.default_rng(0)
    base = np.array([[0.0, 0.0], [1.0, 0.1], [-3.0, 0.0], [0.5, -0.1]])
    s = mimic_init(2, rng)
    for _ in range(30):
        s = mimic_update(s, base + 0.01 * rng.normal(size=base.shape))
    assert abs(s.z[0]) > 0.99  # largest honest spread is along the first axis
    assert mimic_target(s, base) == 2  # the outlying honest row
    a = Mimic(target=0, warmup=5)
    rows = [a.forge(base, 1, np.random.default_rng(t))[0] for t in range(8)]
    np.testing.assert_array_equal(rows[0], base[0])  # warm-up: copies the target
    np.testing.assert_array_equal(rows[-1], base[2])  # then the row farthest along z
    assert a.state_ is not None and a.state_.t == 5


def test_client_attacks_hand() -> None:
    u = [np.array([1.0, -2.0], dtype=np.float32), np.array([[3.0]], dtype=np.float32)]
    out = SignFlipOwn(scale=2.0).corrupt(u, RNG)
    np.testing.assert_allclose(out[0], [-2.0, 4.0])
    assert out[1].dtype == np.float32 and out[1][0, 0] == -6.0
    lf = LabelFlip()
    np.testing.assert_array_equal(lf.corrupt_labels(np.array([0, 1, 9]), 10), [9, 8, 0])
    assert all(np.array_equal(a, b) for a, b in zip(lf.corrupt(u, RNG), u))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        lf.corrupt_labels(np.array([10]), 10)


def test_gaussian_seeded_and_moments() -> None:
    g = Gaussian(std=2.0, mean=1.0)
    u = [np.zeros(50_000, dtype=np.float32)]
    a = g.corrupt(u, np.random.default_rng(5))[0]
    np.testing.assert_array_equal(a, g.corrupt(u, np.random.default_rng(5))[0])
    assert a.dtype == np.float32
    assert a.mean() == pytest.approx(1.0, abs=0.05) and a.std() == pytest.approx(2.0, abs=0.05)
    add = Gaussian(std=0.0, additive=True).corrupt([np.array([1.0, 2.0])], RNG)[0]
    np.testing.assert_array_equal(add, [1.0, 2.0])
    with pytest.raises(ValueError, match="std >= 0"):
        Gaussian(std=-1.0)


def test_where_each_attack_runs() -> None:
    server = {"sign_flip", "alie", "foe", "ipm", "mimic"}
    client = {"sign_flip_own", "gaussian", "label_flip"}
    assert server | client <= set(ATTACKS.names())
    for name in server:
        assert issubclass(ATTACKS.get(name), ServerAttack), name
    for name in client:
        assert issubclass(ATTACKS.get(name), ClientAttack), name
    assert ATTACKS.build("ipm", {"eps": 0.5}).eps == 0.5
    with pytest.raises(PluginError, match="unknown parameter 'tau'; allowed: c"):
        ATTACKS.build("foe", {"tau": 1.0})


def test_forged_dtype_follows_honest() -> None:
    assert SignFlip().forge(H.astype(np.float32), 1, RNG).dtype == np.float32


def test_line_search_against_mean_hand() -> None:
    # stack mean = (3 mu + (1 - c) mu) / 4, so its distance to mu is c |mu| / 4
    cands = [0.0, 1.0, 2.0, 5.0]
    res = line_search(lambda c: FOE(c=c), mean, H, 1, cands)
    np.testing.assert_allclose(res.distances, np.array(cands) * math.sqrt(18) / 4)
    assert res.factor == 5.0 and res.distance == pytest.approx(5 * math.sqrt(18) / 4)


def test_line_search_interior_optimum_against_trimmed_mean() -> None:
    # 1-D honest {0, 1, 2}, f = 1, ALIE sends 1 + c (std = 1): trimmed mean of
    # {0, 1, 2, 1 + c} is (1 + min(1 + c, 2)) / 2 for c >= -1: harm saturates at c = 1,
    # so the first maximiser among the candidates is c = 1.
    res = line_search(lambda c: ALIE(c=c), trimmed_mean, np.array([[0.0], [1.0], [2.0]]), 1,
                      [0.0, 0.5, 1.0, 3.0])
    np.testing.assert_allclose(res.distances, [0.0, 0.25, 0.5, 0.5])
    assert res.factor == 1.0


def test_line_search_attack_against_nna() -> None:
    rng = np.random.default_rng(0)
    honest = rng.normal(size=(7, 4)) + 5.0
    agg = nna_aggregator("byzfl")
    atk = LineSearchAttack(lambda c: ALIE(c=c), agg, [0.0, 0.5, 1.0, 2.0, 4.0, 8.0])
    out = atk.forge(honest, 2, rng)
    assert atk.last_factor is not None
    best = line_search(lambda c: ALIE(c=c), agg, honest, 2, atk.candidates,
                       rng=np.random.default_rng(1))
    assert best.factor == atk.last_factor  # deterministic attack: same choice
    np.testing.assert_allclose(out, ALIE(c=atk.last_factor).forge(honest, 2, rng))
    assert best.distance == max(best.distances) > 0


def test_line_search_validation() -> None:
    with pytest.raises(ValueError, match="at least one candidate"):
        line_search(lambda c: FOE(c=c), mean, H, 1, [])
    with pytest.raises(ValueError, match="f >= 1"):
        line_search(lambda c: FOE(c=c), mean, H, 0, [1.0])
    with pytest.raises(ValueError, match="n_h >= 2"):
        ALIE(c=1.0).forge(H[:1], 1, RNG)
