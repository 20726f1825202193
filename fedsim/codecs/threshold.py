"""DGC's sparsifier: about k largest magnitudes through a threshold estimated on a sample.

Lin, Han, Mao, Wang, Dally, "Deep Gradient Compression", ICLR 2018, Sec. 3.1 ("we
sample only 0.1% to 1% of the gradients and perform top-k selection on the samples to
estimate the threshold"), as the reference code implements it
(https://github.com/synxlin/deep-gradient-compression, ``dgc/compression.py``,
``DGCCompressor._sparsify``):

1. the threshold is the ``ceil(n_s * density)``-th largest magnitude of a strided sample
   with a random start (:func:`sample_stride`, :func:`sampled_threshold`);
2. if more than ``upper * k`` entries pass (1.3k), the exact top-k of the passing entries
   is taken; if fewer than ``lower * k`` pass (0.8k), the threshold is multiplied by
   ``lower`` and the count redone, at most ``max_iters`` (10) times (:func:`select`).

Where the reference then truncates the passing set to its first k *positions*, we keep its
k *largest* entries (an argpartition over at most 1.3k values): same count, no bias toward
low indices. So at most k entries are ever sent, exactly k when the sample covers the
tensor. Selection is a *compressor* in GRACE's sense (Xu et al., ICDCS 2021): it decides
what is sent; what is kept is the memory's business (:mod:`fedsim.codecs.dgc`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .sparse_format import num_selected, topk_indices


def sample_stride(numel: int, density: float, sample_ratio: float) -> tuple[int, int]:
    """(stride, number of samples) of the strided sample, as the reference code sizes it.

    The sample needs ``target = max(ceil(numel * sample_ratio), ceil(2 / density))``
    entries, so that its top ``ceil(n_s * density)`` holds at least 2 values. If
    ``numel <= target`` the whole tensor is the sample (stride 1: the threshold is exact).
    Otherwise ``stride = ceil(numel / target / 32) * 32 + 1`` (odd, so a stride does not
    alias with power-of-two row lengths), lowered by 8 until ``numel // stride >= target``.
    """
    target = max(math.ceil(numel * sample_ratio), math.ceil(round(2.0 / density, 9)))
    if numel <= target:
        return 1, numel
    stride = math.ceil(numel / target / 32) * 32 + 1
    while numel // stride < target:
        stride -= 8
    return stride, numel // stride


def sampled_threshold(
    a: np.ndarray, density: float, sample_ratio: float, rng: np.random.Generator
) -> float:
    """Threshold on magnitudes ``a`` (1-D, >= 0) estimated from a strided sample.

    thr = the ceil(n_s * density)-th largest of ``a[start::stride]`` (n_s samples, random
    ``start`` in [0, stride)): about ``numel * density`` entries of ``a`` reach it.
    """
    stride, n_s = sample_stride(a.size, density, sample_ratio)
    if stride == 1:
        sample = a
    else:
        start = int(rng.integers(0, stride))
        sample = a[start::stride][:n_s]
    k_s = num_selected(sample.size, density)
    return float(np.partition(sample, sample.size - k_s)[sample.size - k_s])  # k_s-th largest


def select(
    v: np.ndarray,
    density: float,
    rng: np.random.Generator,
    *,
    sample_ratio: float = 0.01,
    upper: float = 1.3,
    lower: float = 0.8,
    max_iters: int = 10,
) -> np.ndarray:
    """Sorted positions of about k = ceil(numel * density) largest ``|v|`` (1-D), at most k.

    Threshold by sampling, then the reference code's adaptation: more than ``upper * k``
    pass -> exact top-k of the passing; fewer than ``lower * k`` -> ``thr *= lower`` and
    recount (at most ``max_iters`` times). A passing set larger than k is cut to its k
    largest. Exactly k when the sample is the whole tensor.
    """
    numel = v.size
    k = num_selected(numel, density)
    if k >= numel:
        return np.arange(numel, dtype=np.int64)
    a = np.abs(v)
    thr = sampled_threshold(a, density, sample_ratio, rng)
    mask = a >= thr
    count = int(np.count_nonzero(mask))
    if sample_stride(numel, density, sample_ratio)[0] > 1:
        for _ in range(max_iters):
            if count > upper * k:
                break  # exact top-k of the passing set, below
            if count >= lower * k:
                break
            thr *= lower  # too few: lower the threshold, thr <- 0.8 thr
            mask = a >= thr
            count = int(np.count_nonzero(mask))
    idx = np.flatnonzero(mask)
    if idx.size > k:
        idx = idx[topk_indices(v[idx], k)]  # the k largest of the passing set, still sorted
    return idx.astype(np.int64, copy=False)


@dataclass(frozen=True)
class SampledThreshold:
    """:func:`select` with its parameters fixed: the sparsifier a DGC codec composes.

    Parameters
    ----------
    sample_ratio : float
        Fraction of entries in the threshold sample, in (0, 1]; 1 makes the threshold
        exact. Reference: 0.01.
    upper, lower, max_iters : float, float, int
        The adaptation rules of :func:`select` (reference: 1.3, 0.8, 10).
    """

    sample_ratio: float = 0.01
    upper: float = 1.3
    lower: float = 0.8
    max_iters: int = 10

    def __post_init__(self) -> None:
        if not 0.0 < self.sample_ratio <= 1.0:
            raise ValueError(f"dgc: sample_ratio must be in (0, 1]; got {self.sample_ratio}")
        if not self.upper >= 1.0:
            raise ValueError(f"dgc: upper must be >= 1 (it bounds the count above k); got {self.upper}")
        if not 0.0 < self.lower < 1.0:
            raise ValueError(f"dgc: lower must be in (0, 1) (threshold multiplier and count bound); got {self.lower}")
        if self.max_iters < 0:
            raise ValueError(f"dgc: max_iters must be >= 0; got {self.max_iters}")

    def indices(self, v: np.ndarray, density: float, rng: np.random.Generator) -> np.ndarray:
        """Sorted positions of at most ``ceil(v.size * density)`` largest ``|v|`` (``v`` 1-D)."""
        return select(v, density, rng, sample_ratio=self.sample_ratio, upper=self.upper, lower=self.lower,
                      max_iters=self.max_iters)
