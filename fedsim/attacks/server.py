"""Omniscient (server-side) attacks applied to a round's decoded vectors: the one place.

A :class:`~fedsim.attacks.base.ServerAttack` sees the honest clients' vectors of a round
and forges the Byzantine clients' (ALIE, FoE, IPM, sign flipping, ... in
:mod:`fedsim.attacks.byzantine`). The simulator applies it wherever the decoded vectors
are: the wrapper to decoded model updates, EF21-W to the decoded ``c_i``, MoNNA to the
half-step models, nested dithering to its side-information decodes. Each of them calls
:func:`forge_vectors` (flat vectors) or :func:`forge_updates` (one array per tensor), so
the rule is written once:

- the honest rows are the clients present that are not attackers, in client order, and the
  forged rows go to the attackers present, in client order;
- nothing is forged when the attack is None or when either group is empty;
- the randomness is :func:`attack_rng`, drawn from (run seed, round) only, so the same run
  forges the same vectors whichever strategy applies it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from fedsim.codecs.model import model_vector, split_vector

from .base import ServerAttack

ATTACK_STREAM = 0xA77AC  # the seed stream of omniscient attacks: [seed, round, ATTACK_STREAM]

__all__ = ["ATTACK_STREAM", "attack_rng", "forge_updates", "forge_vectors"]


def attack_rng(seed: int, server_round: int) -> np.random.Generator:
    """The generator an omniscient attack draws from in ``server_round`` of the run ``seed``."""
    return np.random.default_rng([seed, server_round, ATTACK_STREAM])


def forge_vectors(attack: ServerAttack | None, attackers: Collection[int], vectors: Mapping[int, np.ndarray],
                  seed: int, server_round: int, dtype: npt.DTypeLike) -> dict[int, np.ndarray]:
    """The forged flat vectors of the attackers present in ``vectors`` (client -> vector).

    Returns ``{attacker: forged row as dtype}``; empty when there is no attack, no attacker
    or no honest client among ``vectors``. ``vectors`` is not modified.
    """
    byz = sorted(c for c in vectors if c in attackers)
    honest = sorted(c for c in vectors if c not in attackers)
    if attack is None or not byz or not honest:
        return {}
    forged = attack.forge(np.stack([vectors[c] for c in honest]), len(byz), attack_rng(seed, server_round))
    return {c: np.asarray(row, dtype=dtype) for c, row in zip(byz, forged)}


def forge_updates(attack: ServerAttack | None, attackers: Collection[int],
                  updates: Mapping[int, Sequence[np.ndarray]], shapes: Sequence[tuple[int, ...]],
                  seed: int, server_round: int) -> dict[int, list[np.ndarray]]:
    """:func:`forge_vectors` for updates held one array per tensor (``shapes``): each update is
    flattened (:func:`fedsim.codecs.model.model_vector`, in its own dtype), forged, and the
    forged rows are split back into float32 tensors (:func:`~fedsim.codecs.model.split_vector`)."""
    flat = {c: model_vector(u, np.result_type(*u)) for c, u in updates.items()}
    forged = forge_vectors(attack, attackers, flat, seed, server_round, np.float32)
    return {c: split_vector(row, shapes) for c, row in forged.items()}
