"""Compiled (numba) kernels of the dithered quantizers and the symbol packer.

Imported only through :mod:`fedsim.codecs.kernels`, which falls back to numpy when numba
is absent (an edge install). Every kernel does *the same float32 operations in the same
order* as the numpy reference it replaces, so the two give bit-identical payloads and
decodes (tests/test_kernels.py). Each works on a range ``[a, b)`` of entries (whole
buckets) or ``[j0, j1)`` of packed blocks, so that :mod:`~fedsim.codecs.kernels` can run
disjoint ranges in threads (``nogil``); nothing here allocates a tensor-sized array.

Loops index slices (``x = g[lo:hi]``, ``for i in range(x.size)``): numba then knows the
indices are in range and non-negative, and LLVM vectorizes the loop (with ``g[lo + i]``
the wrap-around check for negative indices blocks that: 10x slower here).
"""

from __future__ import annotations

import numba as nb
import numpy as np

U = np.uint32
I = np.int32
F = np.float32
F64 = np.float64
I64 = np.int64
_TINY = float(np.finfo(np.float32).tiny)
_SIDE_CLIP = F(16777216.0)  # fedsim.codecs.nested.SIDE_CLIP


@nb.njit(inline="always")
def _lowbias32(x):  # pragma: no cover - compiled
    x = U(x ^ (x >> U(16)))
    x = U(x * U(0x7FEB352D))
    x = U(x ^ (x >> U(15)))
    x = U(x * U(0x846CA68B))
    return U(x ^ (x >> U(16)))


@nb.njit(inline="always")
def _dither(i, k0, k1):  # pragma: no cover - compiled
    # fedsim.codecs.dither.uniform: u = (h(i*(k1 | 1) + k0) >> 8) * 2**-24 - 1/2
    x = _lowbias32(U(U(U(i) * (k1 | U(1))) + k0))
    return F(I(x >> U(8))) * F(2.0**-24) - F(0.5)


@nb.njit(nogil=True, cache=True)
def absmax(x, bucket, out, a, b):  # pragma: no cover - compiled
    """``out[j] = max |x|`` over bucket ``j`` for the buckets of ``[a, b)``.

    The max of the sign-cleared bit patterns (an integer max, which vectorizes): for
    finite floats it orders as the absolute values; inf and NaN patterns lie above every
    finite one, so a bucket with one gives a non-finite max, as numpy's does.
    """
    tmp = np.empty(1, dtype=np.int32)
    tf = tmp.view(np.float32)
    for lo in range(a, b, bucket):
        xb = x[lo:min(lo + bucket, b)].view(np.int32)
        mb = I(0)
        for i in range(xb.size):
            v = xb[i] & I(0x7FFFFFFF)
            mb = v if v > mb else mb
        tmp[0] = mb
        out[lo // bucket] = tf[0]


@nb.njit(inline="always")
def _bucket_factor(x, j, scale, fit, levels, numerator, tmp):  # pragma: no cover - compiled
    # fit: scale[j] = max(max|x| / levels, tiny) (a float32 step, fedsim.codecs.dithered.steps);
    # then the factor numerator / scale[j], as numpy computes it
    if fit:
        xb = x.view(np.int32)
        mb = I(0)
        for i in range(xb.size):
            v = xb[i] & I(0x7FFFFFFF)
            mb = v if v > mb else mb
        tmp[0] = mb
        s = tmp.view(np.float32)[0] / F(levels)
        scale[j] = F(_TINY) if s <= F(_TINY) else s  # np.maximum: a NaN step stays NaN
    return F(numerator) / scale[j]


@nb.njit(nogil=True, cache=True)
def dqsg_symbols(g, scale, fit, levels, bucket, k0, k1, sym, a, b):  # pragma: no cover - compiled
    """DQSG symbols ``clip(floor(g/s + u + 1/2), -M, M) + M`` (fedsim.codecs.dithered.symbols).

    With ``fit`` the kernel also computes the float32 steps into ``scale`` (one read of
    ``g`` instead of two); otherwise it reads the steps as they will be sent.
    """
    mf = F(levels)
    mi = I(levels)
    tmp = np.empty(1, dtype=np.int32)
    for lo in range(a, b, bucket):
        hi = min(lo + bucket, b)
        x = g[lo:hi]
        sy = sym[lo:hi]
        c = _bucket_factor(x, lo // bucket, scale, fit, levels, 1.0, tmp)
        for i in range(x.size):
            w = x[i] * c
            w = w + _dither(lo + i, k0, k1)
            w = np.floor(w + F(0.5))
            if not np.isfinite(w):  # a diverged client: sent anyway, the server rejects its scale
                w = F(0.0)
            w = mf if w > mf else w
            w = -mf if w < -mf else w
            sy[i] = np.uint8(I(w) + mi)


@nb.njit(nogil=True, cache=True)
def dqsg_values(sym, scale, levels, bucket, k0, k1, out, a, b):  # pragma: no cover - compiled
    """DQSG decode ``s * ((sym - M) - u)`` (fedsim.codecs.dithered.dequantize)."""
    mf = F(levels)
    for lo in range(a, b, bucket):
        hi = min(lo + bucket, b)
        sy = sym[lo:hi]
        o = out[lo:hi]
        s = scale[lo // bucket]
        for i in range(o.size):
            o[i] = ((F(sy[i]) - mf) - _dither(lo + i, k0, k1)) * s


@nb.njit(nogil=True, cache=True)
def nested_symbols(g, scale, fit, m1, alpha, rho, bucket, k0, k1, sym, a, b):  # pragma: no cover - compiled
    """NDQSG coset indices ``clip(floor(alpha*g/s + u + 1/2), -b, b) mod rho``, ``b = ceil(alpha*M1)``
    (fedsim.codecs.nested.coset_symbols)."""
    bf = F(np.ceil(alpha * m1))
    r = F(rho)
    rinv = F(1.0 / rho)
    tmp = np.empty(1, dtype=np.int32)
    for lo in range(a, b, bucket):
        hi = min(lo + bucket, b)
        x = g[lo:hi]
        sy = sym[lo:hi]
        c = _bucket_factor(x, lo // bucket, scale, fit, m1, alpha, tmp)
        for i in range(x.size):
            w = x[i] * c
            w = w + _dither(lo + i, k0, k1)
            w = np.floor(w + F(0.5))  # q1
            if not np.isfinite(w):
                w = F(0.0)
            w = bf if w > bf else w  # |q1| <= ceil(alpha*M1): an ulp of rounding at a bucket's max
            w = -bf if w < -bf else w
            k = np.floor((w + F(0.5)) * rinv) * r  # rho*floor((q1 + 1/2)/rho): exact for integer q1
            sy[i] = np.uint8(w - k)


@nb.njit(nogil=True, cache=True)
def nested_values(sym, table, nblocks, gain, fac, y, rho, bound, coef, constrain, bucket, k0, k1, out, a, b):  # noqa: E501 # pragma: no cover
    """NDQSG decode with side information ``y``; returns the detectable failures in ``[a, b)``.

    The symbols are ``sym[i]``, or with a digit ``table`` (one-byte blocks, e.g. base 3)
    ``sym`` holds the *packed* bytes and symbol ``i`` is ``table[i // nblocks, sym[i % nblocks]]``
    (fedsim.codecs.packing.byte_digits): no unpacked copy of the symbols is made.

    Per entry (fedsim.codecs.nested.nested_fine_index, constrain_fine_index and
    dequantize_fine_index, in their order of float operations)::

        q1_hat = q + rho*rint(((clip(y*gain, +-2**24) + u) - q) / rho)      (times 1/rho in float32)
        failure: |q1_hat| > bound; with ``constrain``, moved by multiples of rho into range
        out = (q1_hat - u)*fac [+ coef*y when coef != 0]
    """
    r = F(rho)
    rinv = F(1.0 / rho)
    bf = F(bound)
    fails = 0
    m = min(bucket, max(b - a, 0))
    ubuf = np.empty(m, dtype=np.float32)  # this bucket's dither and fine indices, in L1: out is written once
    qbuf = np.empty(m, dtype=np.float32)
    sbuf = np.empty(m, dtype=np.uint8)
    lut = table.shape[0] > 0
    for lo in range(a, b, bucket):
        hi = min(lo + bucket, b)
        if lut:  # this bucket's symbols from the packed bytes, row by row of the planar layout
            p = lo
            while p < hi:
                row = p // nblocks
                e = min(hi, (row + 1) * nblocks)
                d = sym[p - row * nblocks:e - row * nblocks]
                t = table[row]
                sb = sbuf[p - lo:e - lo]
                for x in range(d.size):
                    sb[x] = t[d[x]]
                p = e
            sy = sbuf[:hi - lo]
        else:
            sy = sym[lo:hi]
        yy = y[lo:hi]
        o = out[lo:hi]
        ub = ubuf[:hi - lo]
        qb = qbuf[:hi - lo]
        c = gain[lo // bucket]
        f = fac[lo // bucket]
        bucket_fails = 0
        for i in range(o.size):  # branch-free loops, so that they vectorize
            u = _dither(lo + i, k0, k1)
            ub[i] = u
            q = F(sy[i])
            w = yy[i] * c
            w = _SIDE_CLIP if w > _SIDE_CLIP else w  # np.clip(alpha*y/s, -2**24, 2**24)
            w = -_SIDE_CLIP if w < -_SIDE_CLIP else w
            w = w + u
            w = w - q
            w = np.rint(w * rinv) * r + q  # q1_hat
            bucket_fails += I((w > bf) | (w < -bf))  # type: ignore[assignment]  # numba types the count itself
            qb[i] = w
        if bucket_fails and constrain:  # numpy's order: the upper bound first, then the lower on the result
            for i in range(o.size):
                w = qb[i]
                if w > bf:
                    w = w - r * np.ceil((w - bf) / r)
                if w < -bf:
                    w = w + r * np.ceil((-bf - w) / r)
                qb[i] = w
        fails += bucket_fails
        if coef != F(0.0):
            for i in range(o.size):
                o[i] = (qb[i] - ub[i]) * f + coef * yy[i]
        else:
            for i in range(o.size):
                o[i] = (qb[i] - ub[i]) * f
    return fails


@nb.njit(nogil=True, cache=True)
def pack_blocks(sym, out, nblocks, k, m, base, ksplit, j0, j1):  # pragma: no cover - compiled
    """Blocks ``[j0, j1)`` of :func:`fedsim.codecs.packing.pack` from ``k`` planar rows of ``sym``.

    Block ``j``'s value ``v = sum_i sym[j + i*nblocks] * base**i`` is built as
    ``hi * base**ksplit + lo``, each half by Horner in uint32 over a run of blocks (rows are
    contiguous, so the loops vectorize), then written as ``m`` little-endian bytes.
    """
    run = 1024
    lo_acc = np.empty(run, dtype=np.uint32)
    hi_acc = np.empty(run, dtype=np.uint32)
    bb = U(base)
    split = np.uint64(base) ** np.uint64(ksplit)
    for c0 in range(j0, j1, run):
        w = min(c0 + run, j1) - c0
        lo = lo_acc[:w]
        hi = hi_acc[:w]
        lo[:] = 0
        hi[:] = 0
        for i in range(k - 1, ksplit - 1, -1):
            row = sym[i * nblocks + c0:i * nblocks + c0 + w]
            for t in range(w):
                hi[t] = U(hi[t] * bb + U(row[t]))
        for i in range(ksplit - 1, -1, -1):
            row = sym[i * nblocks + c0:i * nblocks + c0 + w]
            for t in range(w):
                lo[t] = U(lo[t] * bb + U(row[t]))
        o = out[c0 * m:(c0 + w) * m]
        for t in range(w):
            v = np.uint64(hi[t]) * split + np.uint64(lo[t])
            for z in range(m):
                o[t * m + z] = np.uint8(v >> np.uint64(8 * z))


@nb.njit(nogil=True, cache=True)
def unpack_blocks(data, sym, nblocks, k, m, base, ksplit, limit, j0, j1):  # pragma: no cover - compiled
    """Inverse of :func:`pack_blocks` for blocks ``[j0, j1)``; returns how many are ``>= limit``.

    Division by the runtime base goes through float64: for ``x < 2**32`` (or ``< 2**53``),
    ``floor((x + 1/2) * (1/base))`` is the exact quotient (``x/base`` is at least
    ``1/(2 base)`` away from the next integer, far more than the rounding error), and
    the split into halves is corrected by one step either way.
    """
    run = 1024
    lo_acc = np.empty(run, dtype=np.uint32)
    hi_acc = np.empty(run, dtype=np.uint32)
    bb = U(base)
    inv_b = 1.0 / F64(base)
    split = I64(base) ** I64(ksplit)
    inv_split = 1.0 / F64(split)
    values = np.empty(run, dtype=np.int64)
    bad = 0
    for c0 in range(j0, j1, run):
        w = min(c0 + run, j1) - c0
        lo = lo_acc[:w]
        hi = hi_acc[:w]
        v = values[:w]
        d = data[c0 * m:(c0 + w) * m]
        if m == 6:  # base 7 (dqsg's default M = 3): the byte loop unrolled, 25% faster
            for t in range(w):
                o = t * 6
                v[t] = (I64(d[o]) | (I64(d[o + 1]) << 8) | (I64(d[o + 2]) << 16) | (I64(d[o + 3]) << 24)
                        | (I64(d[o + 4]) << 32) | (I64(d[o + 5]) << 40))
        else:
            for t in range(w):
                x = I64(0)
                for z in range(m):
                    x |= I64(d[t * m + z]) << I64(8 * z)
                v[t] = x
        for t in range(w):  # v = hi * split + lo, branch-free so that it vectorizes
            x = v[t]
            bad += 1 if x >= limit else 0
            h = I64((F64(x) + 0.5) * inv_split)
            r = x - h * split
            h = h - 1 if r < 0 else h
            r = r + split if r < 0 else r
            h = h + 1 if r >= split else h
            r = r - split if r >= split else r
            hi[t] = U(h)
            lo[t] = U(r)
        for i in range(ksplit):
            row = sym[i * nblocks + c0:i * nblocks + c0 + w]
            for t in range(w):
                x = lo[t]
                q = U((F64(x) + 0.5) * inv_b)
                row[t] = np.uint8(x - q * bb)
                lo[t] = q
        for i in range(ksplit, k):
            row = sym[i * nblocks + c0:i * nblocks + c0 + w]
            for t in range(w):
                x = hi[t]
                q = U((F64(x) + 0.5) * inv_b)
                row[t] = np.uint8(x - q * bb)
                hi[t] = q
    return bad


@nb.njit(nogil=True, cache=True)
def unpack_bytes(data, sym, nblocks, lut, j0, j1):  # pragma: no cover - compiled
    """One-byte blocks (e.g. 5 base-3 symbols): digit ``i`` of block ``j`` is ``lut[i, data[j]]``.

    ``lut`` (k x 256, uint8) holds the base-``b`` digits of every byte value; the caller
    rejects bytes ``>= base**k`` (an invalid packing) separately.
    """
    d = data[j0:j1]
    for i in range(lut.shape[0]):
        row = sym[i * nblocks + j0:i * nblocks + j1]
        t = lut[i]
        for j in range(d.size):
            row[j] = t[d[j]]


@nb.njit(nogil=True, cache=True)
def qsgd_symbols(v, gain, levels, bucket, k0, k1, sym, a, b):  # pragma: no cover - compiled
    """QSGD symbols ``sign(v)*min(floor(|v|*gain + r), s) + s`` (fedsim.codecs.qsgd.qsgd_symbols).

    ``r`` is the counter-based stream on ``[0, 1)``: the dither plus 1/2.
    """
    sf = F(levels)
    for lo in range(a, b, bucket):
        hi = min(lo + bucket, b)
        x = v[lo:hi]
        sy = sym[lo:hi]
        c = gain[lo // bucket]
        for i in range(x.size):
            w = x[i] * c
            t = np.abs(w) + (_dither(lo + i, k0, k1) + F(0.5))
            t = np.floor(t)
            if not np.isfinite(t):
                t = F(0.0)
            t = sf if t > sf else t
            sy[i] = np.uint8(np.copysign(t, w) + sf)


@nb.njit(nogil=True, cache=True)
def qsgd_values(sym, fac, levels, bucket, out, a, b):  # pragma: no cover - compiled
    """QSGD decode ``(sym - s) * (norm/s)`` (fedsim.codecs.qsgd.qsgd_dequantize)."""
    sf = F(levels)
    for lo in range(a, b, bucket):
        hi = min(lo + bucket, b)
        sy = sym[lo:hi]
        o = out[lo:hi]
        f = fac[lo // bucket]
        for i in range(o.size):
            o[i] = (F(sy[i]) - sf) * f
