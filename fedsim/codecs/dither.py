"""Counter-based uniform numbers: the subtractive dither that client and server share.

DQSG and NDQSG (A. Abdi and F. Fekri, arXiv:1904.01197, sections 3-4) need a dither
``u ~ U[-1/2, 1/2)^n`` that the server regenerates exactly. Entry ``i`` of a stream is a
pure function of the stream's 64-bit key ``(k0, k1)`` and ``i``::

    x = h(i * (k1 | 1) + k0)    (mod 2**32)  h: C. Wellons' "lowbias32" integer hash,
                                             a bijection of uint32:
                                 x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15;
                                 x *= 0x846ca68b; x ^= x >> 16   (all mod 2**32)
    u = (x >> 8) * 2**-24 - 1/2

with ``(k0, k1) = CodecContext.key("dither")``, derived from (run seed, round, client,
tensor) through numpy's SeedSequence. This is the SplitMix construction (a Weyl sequence
through a mixing function; G. Steele, D. Lea and C. Flood, "Fast splittable pseudorandom
number generators", OOPSLA 2014) with a key-dependent odd increment, so that two keys
give unrelated sequences rather than shifted copies of one (``k1``'s lowest bit is
unused: 63 bits of key, so two streams coincide with probability ``2**-63``). ``i -> x`` is a bijection of
uint32, so ``u`` takes the ``2**24`` values ``-1/2 + j*2**-24`` exactly ``2**8`` times
each as ``i`` runs over uint32: the marginal is exactly uniform on that grid, and the
float32 result is exact.

Why counter-based instead of a sequential generator (numpy's PCG64 before): the entry
for index ``i`` can be computed anywhere, so an encoder can run in threads over any split
of the tensor and a compiled kernel (:mod:`fedsim.codecs.kernels`) and this numpy
reference give bit-identical dithers. Drawing 10M float32 from PCG64 took 60 ms here,
more than the whole quantizer; the hash costs ~3 ms compiled (one mixing round: a second
one, ``h(h(i ^ k0) ^ k1)``, cost 20% of the whole DQSG encode + decode), ~30 ms in numpy.
It is a statistical generator, not a cryptographic one; tests/test_dither.py checks
uniformity, serial correlation, bit independence of neighbours and independence between
keys, and the codec tests check the dithered quantizers' error laws by Monte Carlo.

Tensors have fewer than ``2**32`` entries (:func:`check_length`).
"""

from __future__ import annotations

import numpy as np

DITHER_STREAM = "dither"
MAX_ENTRIES = 1 << 32
_C1 = np.uint32(0x7FEB352D)
_C2 = np.uint32(0x846CA68B)
_SCALE = np.float32(2.0**-24)


def check_length(n: int) -> int:
    """``n`` as an int, if a counter-based stream can cover it (``n <= 2**32``)."""
    if not 0 <= int(n) <= MAX_ENTRIES:
        raise ValueError(f"a dithered tensor needs 0 <= entries <= 2**32; got {n}")
    return int(n)


def _lowbias32(x: np.ndarray) -> np.ndarray:
    # x ^= x >> 16; x *= C1; x ^= x >> 15; x *= C2; x ^= x >> 16   (uint32, in place)
    x ^= x >> np.uint32(16)
    x *= _C1
    x ^= x >> np.uint32(15)
    x *= _C2
    x ^= x >> np.uint32(16)
    return x


def hash32(key: tuple[int, int], start: int, n: int) -> np.ndarray:
    """The raw 32-bit words of entries ``start .. start + n - 1`` of the stream ``key``."""
    k0, k1 = (np.uint32(k & 0xFFFFFFFF) for k in key)
    x = np.arange(start, start + n, dtype=np.int64).astype(np.uint32)  # i mod 2**32
    x *= k1 | np.uint32(1)  # an odd multiplier: i -> i*(k1|1) + k0 is a bijection
    x += k0
    return _lowbias32(x)


def uniform(key: tuple[int, int], start: int, n: int) -> np.ndarray:
    """Dither entries ``start .. start + n - 1``: float32 on ``[-1/2, 1/2)``, step ``2**-24``."""
    x = hash32(key, start, n)
    x >>= np.uint32(8)
    u = x.astype(np.float32)
    u *= _SCALE
    u -= np.float32(0.5)
    return u


def uniform01(key: tuple[int, int], start: int, n: int) -> np.ndarray:
    """The same stream shifted to ``[0, 1)`` (for stochastic rounding)."""
    u = uniform(key, start, n)
    u += np.float32(0.5)
    return u
