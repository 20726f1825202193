"""Binary versions of the digit datasets, for the EF21 papers' logistic regression.

``mnist5k-binary`` / ``digits-binary``: digits 0-4 are class 1 (the papers' label +1),
5-9 class 0 (-1), as in the EF21 experiments on MNIST. Same images, [0, 1] scaling and
stratified test split as ``mnist5k`` / ``digits``.

The training examples are ordered by feature norm (stable). Partitions that permute
(``iid``, ``dirichlet``) are unaffected; ``shards`` (sort by label, cut into pieces)
then gives every client a contiguous range of norms within one label, so the
smoothness constants ``L_i = lambda_max(A_i^T A_i)/(4 m_i) + 2 lam`` differ across
clients: the heterogeneous setting where EF21-W gains (docs/ef21w.md).
"""

from __future__ import annotations

import numpy as np

from fedsim.registry import DATASETS

from .datasets import Dataset, digits, mnist5k


def binary_digits(ds: Dataset) -> Dataset:
    """Labels ``digit < 5`` -> 1, else 0; training examples sorted by feature norm."""
    order = np.argsort(np.linalg.norm(ds.x_train.reshape(len(ds.x_train), -1), axis=1), kind="stable")
    def relabel(y: np.ndarray) -> np.ndarray:
        return (y < 5).astype(np.int64)  # 0-4 -> 1 (+1), 5-9 -> 0 (-1)
    return Dataset(ds.x_train[order], relabel(ds.y_train[order]), ds.x_test, relabel(ds.y_test), 2)


@DATASETS.register("mnist5k-binary")
def mnist5k_binary(path: str | None = None, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """MNIST-5k as 0-4 vs 5-9 (the EF21 papers' MNIST task)."""
    return binary_digits(mnist5k(path, test_fraction, seed))


@DATASETS.register("digits-binary")
def digits_binary(path: str | None = None, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits as 0-4 vs 5-9 (small: for tests)."""
    return binary_digits(digits(path, test_fraction, seed))
