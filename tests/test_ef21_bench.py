"""The pieces of benchmarks/ef21w.py's L_QM/L_AM sweep: the feature scale that hits a target
ratio (fedsim/ef21/spread.py), and the benchmark's reporting of runs cut off at --max-rounds."""

from __future__ import annotations

import ast
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.ef21.spread import qm_am_ratio, ratio_limit, scale_for_ratio, scaled_smoothness
from fedsim.problems.logreg import smoothness

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "ef21w.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_ef21w", BENCH)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


# ------------------------------------------------------------------- scale_for_ratio


def test_hand_computed_one_outlier_of_four():
    # L = (1, 1, 1, 100): L_QM/L_AM = sqrt(4 (3 + 100^2)) / 103 = sqrt(40012)/103 = 1.942.
    target = math.sqrt(40012) / 103
    assert target == pytest.approx(1.94204, abs=1e-5)
    s = scale_for_ratio([1.0, 1.0, 1.0, 1.0], [3], target, fixed_part=0.0)
    assert s == pytest.approx(10.0, rel=1e-12)  # L_3 = s^2 * 1 = 100


def test_fixed_part_does_not_scale():
    # L_i = 0.2 + 1 (2 lam = 0.2): s = 10 makes L_3 = 0.2 + 100 = 100.2; the ratio of (1.2, 1.2, 1.2, 100.2).
    target = math.sqrt(4 * (3 * 1.2**2 + 100.2**2)) / (3 * 1.2 + 100.2)
    s = scale_for_ratio([1.2] * 4, [3], target, fixed_part=0.2)
    assert s == pytest.approx(10.0, rel=1e-12)
    assert scaled_smoothness([1.2] * 4, [3], s, 0.2) == pytest.approx([1.2, 1.2, 1.2, 100.2], rel=1e-12)


def test_thirty_clients_one_at_200x():
    # n = 30, one L_i 200x the others: sqrt(30 (29 + 200^2)) / 229 = 4.785.
    target = math.sqrt(30 * (29 + 200**2)) / 229
    assert target == pytest.approx(4.785, abs=1e-3)
    assert scale_for_ratio([1.0] * 30, [0], target, 0.0) == pytest.approx(math.sqrt(200), rel=1e-12)


def test_two_clients_scaled_together():
    # L = (1,1,1,1,1,1), clients 4 and 5 scaled by s = 3: L = (1,1,1,1,9,9);
    # ratio sqrt(6 (4 + 162)) / 22 = sqrt(996)/22.
    target = math.sqrt(996) / 22
    assert scale_for_ratio([1.0] * 6, [4, 5], target, 0.0) == pytest.approx(3.0, rel=1e-12)
    assert ratio_limit([1.0] * 6, [4, 5], 0.0) == pytest.approx(math.sqrt(3))  # sqrt(n/|S|)


def test_limit_is_refused_with_the_reason():
    L = [1.0] * 4
    assert ratio_limit(L, [0], 0.0) == pytest.approx(2.0)  # sqrt(n), one client scaled
    with pytest.raises(ValueError, match=r"out of reach.*tends to 2"):
        scale_for_ratio(L, [0], 2.0, 0.0)
    with pytest.raises(ValueError, match="sqrt\\(n\\)"):
        scale_for_ratio([1.0] * 60, [0], 8.0, 0.0)  # sqrt(60) = 7.75 < 8
    assert scale_for_ratio(L, [0], 1.999, 0.0) > 10


def test_already_there_is_no_scaling_and_bad_inputs_say_why():
    assert scale_for_ratio([1.0, 2.0, 3.0], [2], 1.0, 0.0) == 1.0
    assert scale_for_ratio([1.0, 2.0, 3.0], [2], qm_am_ratio([1.0, 2.0, 3.0]), 0.0) == 1.0
    with pytest.raises(ValueError, match=">= 1"):
        scale_for_ratio([1.0, 2.0], [1], 0.5, 0.0)
    with pytest.raises(ValueError, match="distinct"):
        scale_for_ratio([1.0, 2.0], [1, 1], 1.2, 0.0)
    with pytest.raises(ValueError, match=r"in \[0, 2\)"):
        scale_for_ratio([1.0, 2.0], [2], 1.2, 0.0)
    with pytest.raises(ValueError, match="exceed the unscaled part"):
        scale_for_ratio([1.0, 0.2], [1], 1.2, 0.2)


@settings(max_examples=300, deadline=None)
@given(
    L=st.lists(st.floats(0.3, 50.0), min_size=2, max_size=40),
    m=st.integers(1, 3),
    frac=st.floats(0.0, 0.95),
)
def test_achieved_ratio_is_the_target(L, m, frac):
    scaled = list(np.argsort(-np.asarray(L), kind="stable")[: min(m, len(L) - 1)])
    lo, hi = qm_am_ratio(L), ratio_limit(L, scaled, 0.2)
    if hi <= lo:  # scaling the largest can only reach what is already there
        return
    target = max(1.0, lo + frac * (hi - lo))  # equal L_i give 0.999... by rounding
    s = scale_for_ratio(L, scaled, target, 0.2)
    assert s >= 1.0
    assert qm_am_ratio(scaled_smoothness(L, scaled, s, 0.2)) == pytest.approx(target, rel=1e-8)


def test_on_a_tiny_logistic_problem_the_formula_matches_smoothness():
    # Three clients, features scaled as the benchmark does (A_i -> s A_i, bias included).
    rng = np.random.default_rng(3)
    parts = [rng.standard_normal((5, 3)) for _ in range(3)]
    L = [smoothness(A) for A in parts]  # lambda_max(A^T A)/(4 m) + 2 lam, lam = 0.1
    j = int(np.argmax(L))
    s = scale_for_ratio(L, [j], 1.5, fixed_part=0.2)
    L_new = [smoothness(s * A if i == j else A) for i, A in enumerate(parts)]
    assert qm_am_ratio(L_new) == pytest.approx(1.5, rel=1e-10)


# -------------------------------------------------------------- the benchmark's report


def test_cut_off_runs_print_lower_bounds(bench):
    assert bench.format_rounds(1234, 5000) == "1234"
    assert bench.format_rounds(None, 5000) == ">= 5000"
    assert bench.format_gain(4000, 1000, 5000) == "4.000"
    assert bench.format_gain(None, 1000, 5000) == ">= 5.000"  # EF21 needs more than 5000 rounds
    assert bench.format_gain(2000, None, 5000) == "<= 0.400"  # EF21-W needs more than 5000
    assert "nan" not in bench.format_gain(None, None, 5000)


def test_wire_bits(bench):
    # a dense float32 first message (32 d), then (r - 1) messages of k (uint32, float32) pairs
    assert bench.wire_mbit(785, 8, 1) == pytest.approx(32 * 785 / 1e6)
    assert bench.wire_mbit(785, 8, 101) == pytest.approx((25120 + 100 * 512) / 1e6)


def test_scaled_split_keeps_every_sample_once(bench):
    A = np.arange(40.0).reshape(10, 4)
    b = np.where(np.arange(10) % 2 == 0, 1.0, -1.0)
    for how in ("iid", "blocks"):
        parts = bench.split(A, b, 3, how, seed=1)
        assert [len(p[1]) for p in parts] == [4, 3, 3]
        rows = np.vstack([p[0] for p in parts])
        assert sorted(map(tuple, rows)) == sorted(map(tuple, A))


def test_benchmark_imports_nothing_from_tests():
    tree = ast.parse(BENCH.read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in names if m.split(".")[0] in ("tests", "conftest")], names
    assert "sys.path" not in BENCH.read_text()
