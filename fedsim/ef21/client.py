"""EF21 / EF21-W client state and the client's round, as the ClientApp runs it (numpy only).

EF21-W (Richtarik, Gasanov, Burlachenko, ICLR 2024, Algorithm 2) has client i keep
``g_i`` and send ``c_i = C(grad f_i(x)/(n w_i) - g_i)``; the server keeps
``g = sum_i w_i g_i``. Here the client keeps the *unscaled* vector

    h_i = n w_i g_i,        so that the server's  g = (1/n) sum_i h_i,

and the message is computed with the scale ``s_i = n w_i`` the server sends with it::

    c_i = C((grad f_i(x) - h_i) / s_i)          (= C(grad f_i/(n w_i) - g_i))
    h_i = h_i + s_i c_i                         (g_i = g_i + c_i)
    server: g = g + (s_i / n) c_i               (g = g + w_i c_i)

With a fixed ``s_i`` these are exactly EF21-W's iterates (EF21: ``s_i = 1``). Keeping
``h_i`` rather than ``g_i`` makes the invariant ``g == (1/n) sum_i h_i`` independent of
the weights, so the server may fix the weights only after it has heard from every
client (the ``L_i`` arrive with the first messages) without breaking it.

A message is *dense* when the server asks for it (a client's first message, by
default): ``c_i = (grad f_i(x) - h_i)/s_i`` uncompressed, which sets ``h_i`` to
``grad f_i(x)``: the papers' initialisation ``g_i^0 = grad f_i(x^0)/(n w_i)``.

Acknowledgements: ``h_i`` must change exactly when the server added ``(s_i/n) c_i``.
The last message is kept as ``pending`` and committed only when the server, in a
later round, reports that round as the last one it added from this client
(``acked_round``). A reply lost to a dropout, a timeout or a rejection is therefore
forgotten on both sides, and EF21-PP's "absent clients keep g_i" holds by design.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from fedsim.keys import (
    EF21_ACKED_KEY,
    EF21_BATCH_KEY,
    EF21_DENSE_KEY,
    EF21_DTYPE_KEY,
    EF21_K_KEY,
    EF21_SCALE_KEY,
    EF21_TASK,
    EF21_WANT_L_KEY,
    EF21_WIRE_KEY,
    TASK_KEY,
)

__all__ = [
    "EF21ClientState", "client_commit", "client_config", "client_init", "client_round", "from_arrays", "to_arrays",
]

Compress = Callable[[np.ndarray], np.ndarray]


class EF21ClientState(NamedTuple):
    """What client i keeps between rounds (plain arrays and an int: checkpointable).

    Fields
    ------
    h : ndarray, float64
        ``n w_i g_i``: the sum of the client's acknowledged messages, each times the
        scale it was sent with. The server's ``g`` holds ``h / n``. Starts at zeros.
    pending : ndarray, float64
        ``s_i c_i`` of the last message sent, not yet known to have reached the server.
    pending_round : int
        The round ``pending`` was sent in; -1 when nothing is pending.
    """

    h: np.ndarray
    pending: np.ndarray
    pending_round: int


def client_init(dim: int) -> EF21ClientState:
    """Fresh state: ``h_i = 0`` (``g_i = 0``), nothing pending."""
    if dim <= 0:
        raise ValueError(f"model dimension must be positive; got {dim}")
    return EF21ClientState(np.zeros(dim), np.zeros(dim), -1)


def client_commit(state: EF21ClientState, acked_round: int) -> EF21ClientState:
    """``h_i = h_i + s_i c_i`` if the server acknowledges the round ``pending`` was sent in.

    Otherwise the message never reached the server's ``g`` and is dropped here too.
    """
    if state.pending_round < 0:
        return state
    h = state.h + state.pending if acked_round == state.pending_round else state.h  # h_i += s_i c_i
    return EF21ClientState(h, np.zeros_like(state.pending), -1)


def client_round(
    state: EF21ClientState,
    grad: np.ndarray,
    scale: float,
    compress: Compress,
    rnd: int,
    acked_round: int,
) -> tuple[np.ndarray, EF21ClientState]:
    """What the client does in round ``rnd``: commit, then one EF21-W step.

    Parameters
    ----------
    state : EF21ClientState
    grad : ndarray
        ``grad f_i(x)`` (full batch; a minibatch estimate for EF21-SGD).
    scale : float
        ``s_i = n w_i`` for this round (1 for EF21).
    compress : callable
        ``v -> C(v)`` returning the vector *as the server will decode it* (wire
        rounding included), so both sides add the same ``c_i``.
    rnd, acked_round : int
        This round, and the last round whose message from this client the server added.
        A dense message (the server asks for one first) is this with ``compress`` = the
        wire rounding only: ``c_i = (grad - h_i)/s_i``.

    Returns
    -------
    (c_i, new_state)
        The message and the state holding it as pending.
    """
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale s_i = n w_i must be finite and > 0; got {scale!r}")
    state = client_commit(state, acked_round)
    if grad.shape != state.h.shape:
        raise ValueError(f"gradient of shape {grad.shape} for a state of shape {state.h.shape}")
    c = np.asarray(compress((grad - state.h) / scale), dtype=np.float64)  # c_i = C((grad - h_i)/s_i)
    if c.shape != state.h.shape:
        raise ValueError(f"compressor returned shape {c.shape}, expected {state.h.shape}")
    return c, state._replace(pending=scale * c, pending_round=int(rnd))  # pending = s_i c_i


def to_arrays(state: EF21ClientState) -> dict[str, np.ndarray]:
    """The state as a flat dict of arrays (Flower's ``Context.state`` via ContextStore)."""
    return {"h": state.h, "pending": state.pending, "pending_round": np.array([state.pending_round], np.int64)}


def from_arrays(saved: dict[str, np.ndarray], dim: int) -> EF21ClientState:
    """Inverse of :func:`to_arrays`; a fresh state if nothing (or another model's) is saved."""
    if not saved or saved.get("h") is None or saved["h"].shape != (dim,):
        return client_init(dim)
    return EF21ClientState(saved["h"].astype(np.float64), saved["pending"].astype(np.float64),
                           int(saved["pending_round"][0]))


def client_config(scale: float, acked: int, dense: bool, want_L: bool, compressor: str, k: int | None,
                  dtype: str, batch_size: int | None) -> dict[str, Any]:
    """The config of one client's EF21 message: the task, then the ``ef21.*`` keys that
    ``fedsim.clients.ef21`` reads (listed in its module docstring)."""
    return {TASK_KEY: EF21_TASK,
            EF21_SCALE_KEY: float(scale), EF21_ACKED_KEY: int(acked), EF21_DENSE_KEY: bool(dense),
            EF21_WANT_L_KEY: bool(want_L), EF21_WIRE_KEY: {"identity": "dense"}.get(compressor, compressor),
            EF21_K_KEY: int(k or 0), EF21_DTYPE_KEY: dtype, EF21_BATCH_KEY: int(batch_size or 0)}
