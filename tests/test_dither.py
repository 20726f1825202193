"""The counter-based dither (fedsim.codecs.dither): exact definition and statistics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fedsim.codecs.base import CodecContext
from fedsim.codecs.dither import check_length, hash32, uniform, uniform01

M32 = 0xFFFFFFFF


def _lowbias32(x: int) -> int:  # the hash written with Python ints, as in the docstring
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def test_matches_the_definition_written_with_python_ints() -> None:
    key = (0xDEADBEEF, 12345)
    got = hash32(key, 2**32 - 2, 5)  # wraps: indices are taken mod 2**32
    for j, i in enumerate(range(2**32 - 2, 2**32 + 3)):
        want = _lowbias32(((i & M32) * (key[1] | 1) + key[0]) & M32)
        assert int(got[j]) == want
    u = uniform(key, 7, 1)[0]
    assert u == np.float32((_lowbias32((7 * (key[1] | 1) + key[0]) & M32) >> 8) * 2.0**-24 - 0.5)


def test_any_window_of_the_stream_is_the_same_numbers() -> None:
    key = (3, 4)
    whole = uniform(key, 0, 1000)
    assert np.array_equal(uniform(key, 123, 500), whole[123:623])
    assert np.array_equal(uniform01(key, 0, 1000), whole + np.float32(0.5))


def test_range_grid_and_uniformity() -> None:
    u = uniform((11, 22), 0, 200_000)
    assert u.dtype == np.float32 and u.min() >= -0.5 and u.max() < 0.5
    j = (u.astype(np.float64) + 0.5) * 2**24  # on the 2**-24 grid
    assert np.array_equal(j, np.round(j))
    assert stats.kstest(u, stats.uniform(loc=-0.5, scale=1).cdf).pvalue > 1e-3
    counts = np.histogram(u, bins=64, range=(-0.5, 0.5))[0]
    assert stats.chisquare(counts).pvalue > 1e-3


def test_no_serial_correlation_and_keys_are_independent() -> None:
    n = 200_000
    a = uniform((1, 2), 0, n).astype(np.float64)
    b = uniform((1, 6), 0, n).astype(np.float64)  # one bit of the second key word (its bit 0 is unused)
    c = uniform((2, 2), 0, n).astype(np.float64)  # one bit of the first
    bound = 4.5 / np.sqrt(n)  # 4.5 standard errors of a correlation of independent samples
    for lag in (1, 2, 17, 512):
        assert abs(np.corrcoef(a[:-lag], a[lag:])[0, 1]) < bound
    assert abs(np.corrcoef(a, b)[0, 1]) < bound and abs(np.corrcoef(a, c)[0, 1]) < bound
    # neighbouring indices are not related bit by bit either: P(bit equal) = 1/2 per bit
    x = hash32((1, 2), 0, n)
    agree = np.unpackbits((~(x[:-1] ^ x[1:])).view(np.uint8)).mean()
    assert abs(agree - 0.5) < 4.5 * 0.5 / np.sqrt(32 * (n - 1))


def test_context_keys_differ_by_every_coordinate_and_stream() -> None:
    base = CodecContext(1, 2, 3, 4)
    keys = {base.key("dither"), base.key("qsgd"), CodecContext(9, 2, 3, 4).key("dither"),
            CodecContext(1, 9, 3, 4).key("dither"), CodecContext(1, 2, 9, 4).key("dither"),
            CodecContext(1, 2, 3, 9).key("dither")}
    assert len(keys) == 6
    assert base.key("dither") == CodecContext(1, 2, 3, 4).key("dither")
    assert all(0 <= w <= M32 for k in keys for w in k)


def test_length_limit() -> None:
    assert check_length(2**32) == 2**32
    with pytest.raises(ValueError, match="2\\*\\*32"):
        check_length(2**32 + 1)


def test_the_port_check_values_of_docs_wire_format() -> None:
    key = CodecContext(0, 1, 0, 0).key("dither")
    assert key == (3703280604, 3110281894)
    np.testing.assert_array_equal(uniform(key, 0, 4),
                                  np.array([0.20999289, -0.48428273, -0.43173832, -0.17794877], dtype=np.float32))


def test_neighbouring_pairs_fill_the_unit_square_evenly() -> None:
    u = uniform((0xA5A5, 0x1234567), 0, 400_000).astype(np.float64) + 0.5
    for lag in (1, 2, 3):  # (u_i, u_{i+lag}) on a 16 x 16 grid: chi-square with 255 degrees of freedom
        counts = np.histogram2d(u[:-lag], u[lag:], bins=16, range=[[0, 1], [0, 1]])[0].ravel()
        assert stats.chisquare(counts).pvalue > 1e-4


def test_many_clients_dithers_are_uncorrelated_coordinate_by_coordinate() -> None:
    n, keys = 50_000, [CodecContext(7, 3, c, 0).key("dither") for c in range(20)]
    u = np.stack([uniform(k, 0, n) for k in keys]).astype(np.float64)
    corr = np.corrcoef(u)[np.triu_indices(len(keys), 1)]
    assert np.abs(corr).max() < 5.0 / np.sqrt(n)  # 190 pairs: 5 standard errors
    # the mean of 20 clients' dithers has the variance of independent ones: 1/(12*20)
    assert u.mean(axis=0).var() == pytest.approx(1 / 240, rel=0.03)
