"""The attack seam.

Which clients are Byzantine is drawn once from the run seed (:func:`attacker_ids`),
so every run with the same seed attacks with the same clients.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np


def attacker_ids(seed: int, num_clients: int, count: int) -> list[int]:
    """The ``count`` Byzantine client ids of a run, drawn from ``seed`` (sorted)."""
    if not 0 <= count <= num_clients:
        raise ValueError(f"attack count must be in [0, {num_clients}]; got {count}")
    rng = np.random.default_rng([seed, 0xB12A])
    return sorted(int(i) for i in rng.choice(num_clients, size=count, replace=False))


class ClientAttack(ABC):
    """Runs on a Byzantine client: replaces its (dense) update before it is encoded."""

    name: ClassVar[str] = ""

    @abstractmethod
    def corrupt(self, update: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        """Return what the client sends in place of ``update`` (same shapes)."""

    def corrupt_labels(self, y: np.ndarray, num_classes: int) -> np.ndarray:
        """Data-side attacks override this (label flipping); the default keeps ``y``."""
        return y


class ServerAttack(ABC):
    """Omniscient: forges the Byzantine vectors from the honest ones of the round."""

    name: ClassVar[str] = ""

    @abstractmethod
    def forge(self, honest: np.ndarray, num_byzantine: int, rng: np.random.Generator) -> np.ndarray:
        """``honest`` is (n_honest, d); return (num_byzantine, d)."""
