"""Faults: broken rather than malicious clients (used to test payload validation)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsim.registry import ATTACKS

from .base import ClientAttack


@ATTACKS.register("nan")
class NaNFault(ClientAttack):
    """Send NaN in every coordinate (a client whose training diverged)."""

    name = "nan"

    def corrupt(self, update: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        return [np.full_like(np.asarray(u, dtype=np.float32), np.nan) for u in update]
