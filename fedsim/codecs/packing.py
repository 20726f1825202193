"""Honest bit counts: pack symbols of base ``b`` into bytes and back.

``n`` symbols in ``[0, b)`` (padded with zeros to ``k * nb`` symbols, ``nb = ceil(n/k)``)
are laid out *planar*, as ``k`` rows of ``nb``: block ``j`` holds the symbols
``j, j + nb, ..., j + (k-1)*nb`` as the integer ``v_j = sum_i s[j + i*nb] * b**i``
(``v_j < b**k``), written in ``m`` little-endian bytes. The planar layout lets every step
of the packer and unpacker run over contiguous rows. For each base the block ``(k, m)`` is the one with the fewest
bits per symbol ``8m/k`` subject to ``b**k <= 256**m`` and ``m <= 8`` (ties: the
smallest ``m``, which is the fastest). The last block is padded with zero symbols,
and a strict unpacker rejects any block whose value is ``>= b**k`` or whose padding
is not zero, so that every byte string has at most one meaning.

Best blocks (bits per symbol; ``log2 b`` is the bound no fixed-length code can beat):

====  =====  ======  =====
base  k, m   bits    log2 b
====  =====  ======  =====
2     8, 1   1.000   1.000
3     5, 1   1.600   1.585
5     24, 7  2.333   2.322
7     17, 6  2.824   2.807
9     5, 2   3.200   3.170
====  =====  ======  =====

``python -m fedsim.codecs.packing`` prints the table for every base 2..16. Note that
three base-7 symbols do not fit a byte (7**3 = 343 > 256); the best block for base 7
is 17 symbols in 6 bytes (7**17 = 2.33e14 <= 2**48 = 2.81e14).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from . import kernels

MAX_BLOCK_BYTES = 8


@cache
def best_block(base: int, max_bytes: int = MAX_BLOCK_BYTES) -> tuple[int, int]:
    """The block ``(k symbols, m bytes)`` with the fewest bits per symbol for ``base``.

    Parameters
    ----------
    base : int
        Alphabet size, ``2 <= base <= 256``.
    max_bytes : int
        Largest block in bytes (``1..8``: a block is computed in one uint64).

    Returns
    -------
    (k, m) : tuple of int
        ``k`` symbols in ``m`` bytes, ``base**k <= 256**m``, minimising ``8m/k``.
    """
    if not 2 <= base <= 256:
        raise ValueError(f"a packer needs 2 <= base <= 256 (one symbol per uint8); got {base}")
    if not 1 <= max_bytes <= MAX_BLOCK_BYTES:
        raise ValueError(f"max_bytes must be in 1..{MAX_BLOCK_BYTES} (uint64 blocks); got {max_bytes}")
    best: tuple[int, int] | None = None
    for m in range(1, max_bytes + 1):
        k = 0
        while base ** (k + 1) <= 256**m:  # exact integer arithmetic, no log rounding
            k += 1
        # fewer bits per symbol wins: 8m/k < 8m'/k'  <=>  m*k' < m'*k
        if best is None or m * best[0] < best[1] * k:
            best = (k, m)
    assert best is not None
    return best


def bits_per_symbol(base: int, max_bytes: int = MAX_BLOCK_BYTES) -> float:
    """``8m/k`` for the best block of ``base`` (excluding the padding of the last block)."""
    k, m = best_block(base, max_bytes)
    return 8.0 * m / k


def packed_nbytes(n: int, base: int, max_bytes: int = MAX_BLOCK_BYTES) -> int:
    """Bytes that :func:`pack` writes for ``n`` symbols: ``ceil(n/k) * m``."""
    k, m = best_block(base, max_bytes)
    return -(-int(n) // k) * m


def padded_length(n: int, base: int, max_bytes: int = MAX_BLOCK_BYTES) -> int:
    """``k * ceil(n/k)``: the symbols :func:`pack` lays out, padding included."""
    k, _ = best_block(base, max_bytes)
    return -(-int(n) // k) * k


@cache
def _split(base: int, max_bytes: int) -> int | None:
    """Digits in the low half of a block for the compiled packer, or None if it can't take ``base``.

    The kernels hold a block as two uint32 halves ``hi * base**ksplit + lo`` and need the
    block values below ``2**53`` (exact in float64).
    """
    k, m = best_block(base, max_bytes)
    if base**k >= 2**53 or m > 7:
        return None
    for ksplit in range(k // 2, k + 1):
        if base**ksplit < 2**32 and base ** (k - ksplit) < 2**32:
            return ksplit
    return None


@cache
def _digits(base: int, k: int) -> np.ndarray:
    """``(k, 256)`` uint8: digit ``i`` (least significant first) of each byte value in base ``base``."""
    v = np.arange(256)
    return np.stack([(v // base**i) % base for i in range(k)]).astype(np.uint8)


def _acc_dtype(m: int, base: int) -> type[np.unsignedinteger]:
    # the smallest unsigned type holding m bytes (b**k - 1 < 256**m fits) and the base itself
    # (base 256, k = m = 1: a uint8 block, but the divisor 256 needs a uint16)
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if np.dtype(dt).itemsize >= m and np.iinfo(dt).max >= base:
            return dt
    raise AssertionError(m)


def pack(
    symbols: np.ndarray, base: int, max_bytes: int = MAX_BLOCK_BYTES, n: int | None = None, check: bool = True
) -> np.ndarray:
    """Pack a 1-D array of symbols in ``[0, base)`` into a uint8 array.

    Parameters
    ----------
    symbols : ndarray
        1-D, any integer dtype; every entry must lie in ``[0, base)``.
    base : int
        Alphabet size.
    max_bytes : int
        Largest block in bytes (see :func:`best_block`).
    n : int, optional
        The number of symbols when ``symbols`` is already padded to
        :func:`padded_length` with zeros (an encoder's output: no copy is made).
    check : bool
        Verify that every symbol is in range and the padding is zero (two passes over the
        symbols). An encoder whose symbols are in range by construction passes False.

    Returns
    -------
    ndarray of uint8, shape ``(packed_nbytes(n, base),)``.
    """
    sym = np.asarray(symbols)
    if sym.ndim != 1:
        raise ValueError(f"pack expects a 1-D array of symbols; got shape {sym.shape}")
    n = sym.size if n is None else int(n)
    k, m = best_block(base, max_bytes)
    nblocks = -(-n // k)
    if sym.size not in (n, nblocks * k) or (check and sym.size > n and sym[n:].any()):
        raise ValueError(f"pack: {sym.size} symbols for n={n}: expected n, or {nblocks * k} with zero padding")
    if check and sym.size and (int(sym.min()) < 0 or int(sym.max()) >= base):
        raise ValueError(f"symbols must lie in [0, {base}); got [{int(sym.min())}, {int(sym.max())}]")
    acc_t = _acc_dtype(m, base)
    if n == 0:
        return np.zeros(0, dtype=np.uint8)
    sym = sym.astype(np.uint8, copy=False)  # in range: base <= 256
    if sym.size != nblocks * k:  # pad with zero symbols to k full rows
        padded = np.zeros(nblocks * k, dtype=np.uint8)
        padded[:n] = sym
        sym = padded
    jit, ksplit = kernels.jit(), _split(base, max_bytes)
    if jit is not None and ksplit is not None:
        out = np.empty(nblocks * m, dtype=np.uint8)
        kernels.parallel(jit.pack_blocks, nblocks, 1, np.ascontiguousarray(sym), out, nblocks, k, m, base, ksplit,
                         size=n)
        return out
    rows = sym.reshape(k, nblocks)  # row i = digit i of every block
    # Horner, most significant digit first: v = (((s_{k-1}) b + s_{k-2}) b + ...) b + s_0
    acc = rows[k - 1].astype(acc_t)
    bb = acc_t(base)
    for i in range(k - 2, -1, -1):
        acc *= bb
        acc += rows[i]
    out = acc.astype(acc.dtype.newbyteorder("<"), copy=False).view(np.uint8).reshape(nblocks, -1)
    if out.shape[1] != m:
        out = out[:, :m]
    return np.ascontiguousarray(out).reshape(-1)


def unpack(
    data: np.ndarray, n: int, base: int, max_bytes: int = MAX_BLOCK_BYTES, strict: bool = True,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Inverse of :func:`pack`: ``n`` symbols (uint8) from packed bytes.

    Parameters
    ----------
    data : ndarray of uint8
        Exactly ``packed_nbytes(n, base)`` bytes.
    n : int
        Number of symbols.
    base : int
        Alphabet size.
    max_bytes : int
        Must match the packer's.
    strict : bool
        Reject (``ValueError``) a block value ``>= base**k`` or non-zero padding
        symbols: such bytes cannot come from :func:`pack`.
    out : ndarray of uint8, optional
        A buffer of at least :func:`padded_length` entries to unpack into (no allocation);
        the result is then a view of it.

    Returns
    -------
    ndarray of uint8, shape ``(n,)``.
    """
    k, m = best_block(base, max_bytes)
    nblocks = -(-int(n) // k)
    data = np.asarray(data)
    if n < 0:
        raise ValueError(f"symbol count must be >= 0; got {n}")
    if data.dtype != np.uint8 or data.ndim != 1 or data.size != nblocks * m:
        raise ValueError(
            f"expected {nblocks * m} packed bytes (uint8, 1-D) for {n} base-{base} symbols; "
            f"got dtype {data.dtype}, shape {data.shape}"
        )
    if nblocks == 0:
        return np.zeros(0, dtype=np.uint8)
    jit, ksplit = kernels.jit(), _split(base, max_bytes)
    if jit is not None and m == 1:  # a table of the digits of every byte
        if strict and int(data.max()) >= base**k:
            raise ValueError(f"packed block value {int(data.max())} >= {base}**{k}: not a valid packing")
        rows = symbol_buffer(nblocks * k, out)
        kernels.parallel(jit.unpack_bytes, nblocks, 1, np.ascontiguousarray(data), rows, nblocks, _digits(base, k),
                         size=n)
        return _check_padding(rows, n, strict)
    if jit is not None and ksplit is not None:
        rows = symbol_buffer(nblocks * k, out)
        bad = sum(kernels.parallel(jit.unpack_blocks, nblocks, 1, np.ascontiguousarray(data), rows, nblocks, k, m,
                                   base, ksplit, base**k, size=n))
        if strict and bad:
            raise ValueError(f"{bad} packed block value(s) >= {base}**{k}: not a valid packing")
        return _check_padding(rows, n, strict)
    acc_t = _acc_dtype(m, base)
    width = np.dtype(acc_t).itemsize
    if width == m:
        acc = data.view(np.dtype(acc_t).newbyteorder("<")).astype(acc_t)
    else:
        wide = np.zeros((nblocks, width), dtype=np.uint8)
        wide[:, :m] = data.reshape(nblocks, m)
        acc = wide.view(np.dtype(acc_t).newbyteorder("<")).reshape(-1).astype(acc_t)
    if strict and int(acc.max()) >= base**k:
        raise ValueError(f"packed block value {int(acc.max())} >= {base}**{k}: not a valid packing")
    rows = symbol_buffer(nblocks * k, out).reshape(k, nblocks)
    bb = acc_t(base)
    for i in range(k):  # digit i = v mod b, then v //= b (SIMD division by a scalar)
        q = acc // bb
        acc -= q * bb
        rows[i] = acc
        acc = q
    return _check_padding(rows.reshape(-1), n, strict)


def byte_digits(base: int, max_bytes: int = MAX_BLOCK_BYTES) -> np.ndarray | None:
    """The ``(k, 256)`` digit table when ``base`` packs into one-byte blocks (else None).

    Symbol ``i*nblocks + j`` of a packing is then ``table[i, data[j]]``: a decoder can read
    the symbols straight from the bytes without unpacking them first.
    """
    k, m = best_block(base, max_bytes)
    return _digits(base, k) if m == 1 else None


def check_byte_packed(data: np.ndarray, n: int, base: int) -> None:
    """:func:`unpack`'s strict checks for one-byte blocks, without unpacking (ValueError).

    Length and dtype, every byte ``< base**k``, and zero padding symbols (fewer than ``k``,
    at indices ``n .. k*nblocks - 1``).
    """
    k, m = best_block(base)
    if m != 1:
        raise ValueError(f"base {base} packs into {m}-byte blocks; check_byte_packed needs 1")
    nblocks = -(-int(n) // k)
    if data.dtype != np.uint8 or data.ndim != 1 or data.size != nblocks:
        raise ValueError(f"expected {nblocks} packed bytes (uint8, 1-D) for {n} base-{base} symbols; "
                         f"got dtype {data.dtype}, shape {data.shape}")
    if nblocks and int(data.max()) >= base**k:
        raise ValueError(f"packed block value {int(data.max())} >= {base}**{k}: not a valid packing")
    pad = np.arange(n, nblocks * k)
    if pad.size and _digits(base, k)[pad // nblocks, data[pad % nblocks]].any():
        raise ValueError("non-zero padding symbols after the last symbol: not a valid packing")


def symbol_buffer(size: int, out: np.ndarray | None = None) -> np.ndarray:
    """``size`` uint8 entries for symbols: a view of ``out`` (checked), or a new array.

    The codecs pass :func:`fedsim.codecs.kernels.scratch`: symbols only live between
    quantizer and packer (or unpacker and decoder), and a fresh tensor-sized array costs
    more in page faults than the packing.
    """
    if out is None:
        return np.empty(size, dtype=np.uint8)
    if out.dtype != np.uint8 or out.ndim != 1 or out.size < size or not out.flags.c_contiguous:
        raise ValueError(f"out must be a contiguous 1-D uint8 array of >= {size} entries")
    return out[:size]


def _check_padding(out: np.ndarray, n: int, strict: bool) -> np.ndarray:
    if strict and out.size > n and out[n:].any():
        raise ValueError("non-zero padding symbols after the last symbol: not a valid packing")
    return out[:n]


def _table() -> str:
    lines = ["base  k   m  bits/sym  log2(b)  overhead"]
    for b in range(2, 17):
        k, m = best_block(b)
        bits = 8.0 * m / k
        lines.append(f"{b:4d} {k:3d} {m:3d}  {bits:8.4f}  {np.log2(b):7.4f}  {bits / np.log2(b) - 1:8.2%}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(_table())
