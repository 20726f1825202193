"""Typed codec state, and the one pair of functions that turns it into arrays and back.

A codec's per-tensor state is a ``NamedTuple`` whose fields are numpy arrays or nested
states, as Optax's ``TraceState`` (Babuschkin et al., "The DeepMind JAX Ecosystem", 2020):
:class:`EmptyState` for a memoryless codec, ``ErrorFeedbackState(e, inner)`` for error
feedback (:mod:`fedsim.codecs.sparse`), ``DGCState(u, v)`` for Deep Gradient Compression
(:mod:`fedsim.codecs.dgc`). A codec reads its state by attribute (``state.u``), never by a
string key.

The client store keeps plain arrays (Flower's ``Context.state``, checkpoints, ``.npz``
spill files: :mod:`fedsim.state`), so a state crosses that boundary through
:func:`state_arrays` and :func:`restore_state`. A field holding an array is stored under
its name; a field holding a nested state under ``"<field>.<key>"`` (so
``ErrorFeedbackState(e, DGCState(u, v))`` is ``{"e", "inner.u", "inner.v"}``), in field
order: the keys every fedsim version before typed state wrote, so old checkpoints resume.

A plugin codec may still keep a ``dict`` of arrays as its state: its keys are stored as
they are and it gets back every array stored for its tensor, unchecked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

State = Any
"""A codec's per-tensor state: a ``NamedTuple`` of arrays and nested states (fedsim's codecs)
or a ``dict`` of numpy arrays (accepted from plugins)."""


class EmptyState(NamedTuple):
    """The state of a memoryless codec: no arrays (falsy, like an empty dict)."""


def _is_typed(state: object) -> bool:
    return isinstance(state, tuple) and hasattr(state, "_fields")


def _not_a_state(state: object) -> TypeError:
    return TypeError(f"codec state must be a NamedTuple of arrays or a dict of arrays; got {type(state).__name__}")


def state_arrays(state: State) -> dict[str, np.ndarray]:
    """The arrays of ``state``, keyed by field name (nested states as ``"<field>.<key>"``).

    Raises TypeError for anything but a NamedTuple state or a dict of arrays.
    """
    if isinstance(state, Mapping):
        return dict(state)
    if not _is_typed(state):
        raise _not_a_state(state)
    out: dict[str, np.ndarray] = {}
    for name, value in zip(state._fields, state):
        if isinstance(value, np.ndarray):
            out[name] = value
        else:
            out.update({f"{name}.{key}": a for key, a in state_arrays(value).items()})
    return out


def restore_state(template: State, arrays: Mapping[str, np.ndarray], where: str = "") -> State:
    """The state of ``template``'s type and structure with the stored ``arrays`` in it.

    The inverse of :func:`state_arrays`. ``template`` is a fresh state (``codec.init(info)``):
    it says which keys must be present and the shape and dtype of each; keys it does not
    have are ignored. Raises ValueError naming the key when one is missing or does not fit
    (state saved for another model or codec). A ``dict`` template (a plugin's untyped
    state) gets every stored array back as it is.
    """
    if isinstance(template, Mapping):
        return dict(arrays)
    if not _is_typed(template):
        raise _not_a_state(template)
    values = []
    for name, fresh in zip(template._fields, template):
        if isinstance(fresh, np.ndarray):
            values.append(_stored(arrays, name, fresh, where))
        else:
            prefix = f"{name}."
            inner = {k[len(prefix):]: a for k, a in arrays.items() if k.startswith(prefix)}
            values.append(restore_state(fresh, inner, f"{where}{prefix}"))
    return type(template)(*values)


def _stored(arrays: Mapping[str, np.ndarray], key: str, fresh: np.ndarray, where: str) -> np.ndarray:
    if key not in arrays:
        raise ValueError(f"saved codec state has no {where + key!r} (keys: {sorted(arrays)}): saved by another codec?")
    a = arrays[key]
    if not isinstance(a, np.ndarray) or a.shape != fresh.shape or a.dtype != fresh.dtype:
        got = (getattr(a, "dtype", type(a).__name__), getattr(a, "shape", None))
        raise ValueError(f"saved codec state {where + key!r} is {got[0]} of shape {got[1]}; the codec keeps "
                         f"{fresh.dtype} of shape {fresh.shape} (saved for another model or codec?)")
    return a
