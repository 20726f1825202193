"""A client's codec-state cycle: restore, encode, save, in one place for every client task.

Flower rebuilds the ClientApp for every message, so what a codec keeps between the rounds
a client takes part in (error-feedback residual, DGC's momentum and accumulation) lives in
the client store (:class:`fedsim.state.ContextStore`) as plain arrays. One round of a task
that replies with an encoded update (``train``, ``monna``) is::

    saved  = store.load()                                  # {"<tensor>.<field>": array}
    states = restore_states(codec, infos, saved)           # typed, or fresh if nothing saved
    payload, states = encode_update(codec, update, ...)    # fedsim.codecs.model
    store.save(saved_arrays(states))

:func:`encode_round` does the middle three. The stored keys are ``"<tensor index>.<key>"``
with the state's keys from :func:`fedsim.codecs.states.state_arrays` (``"0.u"``,
``"3.inner.e"``), which is what checkpoints hold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .base import Codec, Payload, State, TensorInfo
from .model import encode_update, flatten, init_states, unflatten
from .states import restore_state, state_arrays


def restore_states(codec: Codec[State], infos: Sequence[TensorInfo], saved: Mapping[str, np.ndarray]) -> list[State]:
    """Each tensor's state from the stored arrays; fresh states when nothing is stored.

    Raises PayloadError for a stored key that is not ``"<tensor index>.<key>"`` of this
    model, ValueError for a missing or misfitting array (state of another model or codec).
    """
    fresh = init_states(codec, infos)
    if not saved:
        return fresh
    parts = unflatten(saved, len(infos))
    return [restore_state(f, part, f"{i}.") for i, (f, part) in enumerate(zip(fresh, parts))]


def saved_arrays(states: Sequence[State]) -> dict[str, np.ndarray]:
    """The arrays to store for the per-tensor ``states``: ``{"<tensor index>.<key>": array}``."""
    return flatten([state_arrays(s) for s in states])


def encode_round(
    codec: Codec[State],
    update: Sequence[np.ndarray],
    infos: Sequence[TensorInfo],
    saved: Mapping[str, np.ndarray],
    seed: int,
    round_: int,
    client: int,
) -> tuple[Payload, dict[str, np.ndarray]]:
    """Restore the client's codec state from ``saved``, encode ``update``; return the payload
    and the arrays to store for the next round this client takes part in."""
    states = restore_states(codec, infos, saved)
    payload, states = encode_update(codec, update, infos, states, seed, round_, client)
    return payload, saved_arrays(states)
