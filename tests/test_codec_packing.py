"""The base-b symbol packer: best blocks, round trips, strict rejection."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.codecs.packing import best_block, bits_per_symbol, pack, packed_nbytes, unpack


@pytest.mark.parametrize(
    "base, block",
    [(2, (8, 1)), (3, (5, 1)), (4, (4, 1)), (5, (24, 7)), (7, (17, 6)), (9, (5, 2)), (16, (2, 1))],
)
def test_best_block_hand_values(base: int, block: tuple[int, int]) -> None:
    assert best_block(base) == block


def test_three_base7_symbols_do_not_fit_a_byte() -> None:
    # the "3 base-7 symbols in a byte" is impossible: 7**3 = 343 > 256
    assert 7**3 > 256
    assert best_block(7, max_bytes=1) == (2, 1)  # 4 bits a symbol within one byte
    assert bits_per_symbol(7) == pytest.approx(48 / 17)  # 2.824, vs log2 7 = 2.807


@pytest.mark.parametrize("base", range(2, 17))
def test_best_block_is_valid_and_optimal(base: int) -> None:
    k, m = best_block(base)
    assert base**k <= 256**m and 1 <= m <= 8
    assert bits_per_symbol(base) >= math.log2(base) - 1e-12
    for mm in range(1, 9):  # no (k', m') with m' <= 8 does better
        kk = max(j for j in range(1, 70) if base**j <= 256**mm)
        assert 8 * m / k <= 8 * mm / kk + 1e-12


@pytest.mark.parametrize("base", range(2, 17))
def test_round_trip_every_base(base: int) -> None:
    rng = np.random.default_rng(base)
    for n in (0, 1, 2, 16, 17, 18, 1000, 4099):
        sym = rng.integers(0, base, n).astype(np.uint8)
        data = pack(sym, base)
        assert data.dtype == np.uint8 and data.size == packed_nbytes(n, base)
        np.testing.assert_array_equal(unpack(data, n, base), sym)


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 16).flatmap(lambda b: st.tuples(st.just(b), st.lists(st.integers(0, b - 1), max_size=200))))
def test_round_trip_property(case: tuple[int, list[int]]) -> None:
    base, symbols = case
    sym = np.asarray(symbols, dtype=np.uint8)
    np.testing.assert_array_equal(unpack(pack(sym, base), sym.size, base), sym)


def test_hand_packed_bytes() -> None:
    # base 3, digits little-endian: 1 + 2*3 + 0*9 + 1*27 + 2*81 = 196
    np.testing.assert_array_equal(pack(np.array([1, 2, 0, 1, 2]), 3), [196])
    # base 7, 17 symbols in 6 little-endian bytes: a single 6 at position 1 -> 42
    sym = np.zeros(17, dtype=np.uint8)
    sym[1] = 6
    np.testing.assert_array_equal(pack(sym, 7), [42, 0, 0, 0, 0, 0])


def test_rejects_symbol_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        pack(np.array([0, 3]), 3)


def test_strict_unpack_rejects_invalid_blocks() -> None:
    with pytest.raises(ValueError, match="not a valid packing"):
        unpack(np.array([243], dtype=np.uint8), 5, 3)  # 3**5 = 243 codes only
    with pytest.raises(ValueError, match="not a valid packing"):
        unpack(np.full(6, 255, dtype=np.uint8), 17, 7)  # 2**48 - 1 >= 7**17
    with pytest.raises(ValueError, match="padding"):
        unpack(pack(np.array([1, 1, 1, 1, 1]), 3), 4, 3)  # a fifth, non-zero symbol
    with pytest.raises(ValueError, match="expected 2 packed bytes"):
        unpack(np.zeros(3, dtype=np.uint8), 10, 3)
