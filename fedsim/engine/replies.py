"""The checks on what a client replies, as pure functions and one small class.

What the wrapper (:mod:`fedsim.engine.wrapper`) and a :class:`~fedsim.engine.view.PayloadStrategy`
running on its own both apply to a reply:

- :func:`reply_cap`: the largest serialized payload accepted, checked before anything is
  deserialised (:func:`fedsim.wire.read_reply`);
- :class:`MetricsCheck`: only the documented metrics pass, and ``num-examples`` must be the
  size the client reported at discovery (a reply never sets its own FedAvg weight);
- :func:`check_update`: a decoded update must be finite, and within
  ``validation.max_update_norm`` when one is set.

Each raises :class:`~fedsim.codecs.base.PayloadError` with the reason, which rejects that
client's reply only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fedsim.codecs.base import PayloadError, TensorInfo
from fedsim.keys import NUM_EXAMPLES

log = logging.getLogger("fedsim")


def reply_cap(infos: Sequence[TensorInfo], max_payload_ratio: float = 2.0) -> int:
    """Bytes a reply may hold: ``max_payload_ratio`` x the dense float32 update, plus 64 KiB
    and 256 bytes a tensor for npy headers and small fields."""
    dense = sum(i.numel for i in infos) * 4
    return int(max_payload_ratio * dense) + 64 * 1024 + 256 * len(infos)


def squared_norm(a: np.ndarray) -> float:
    """``sum a**2`` of a finite array: a float32 dot (BLAS), redone in float64 if it overflowed."""
    x = np.ascontiguousarray(a).reshape(-1)
    with np.errstate(over="ignore"):
        sq = float(np.dot(x, x))
    if not math.isfinite(sq):  # beyond ~3.4e38: only huge updates pay for the float64 copy
        x64 = x.astype(np.float64)
        sq = float(np.dot(x64, x64))
    return sq


def check_update(update: Sequence[np.ndarray], infos: Sequence[TensorInfo] = (),
                 max_norm: float | None = None) -> None:
    """A decoded update (one array a tensor of ``infos``, or one flat vector) must be finite,
    and its L2 norm at most ``max_norm`` if given; PayloadError otherwise."""
    names = [i.name for i in infos] if len(update) == len(infos) else None
    for k, d in enumerate(update):
        if not np.isfinite(d).all():
            raise PayloadError(f"{names[k] if names else 'update'}: the decoded update is not finite")
    if max_norm is not None:
        norm = math.sqrt(sum(squared_norm(d) for d in update))
        if norm > max_norm:
            raise PayloadError(f"update norm {norm:.6g} exceeds validation.max_update_norm = {max_norm:g}")


class MetricsCheck:
    """The metrics a reply may carry, and the FedAvg weight it is given.

    Parameters
    ----------
    allowed : iterable of str
        The metric keys kept (others are dropped, logged once each).
    num_examples : mapping of int to int
        Each client's number of examples, reported at discovery.
    tolerance : float
        ``|claimed - known| <= tolerance * known + 1/2`` is accepted.
    """

    def __init__(self, allowed: Iterable[str], num_examples: Mapping[int, int] | None = None,
                 tolerance: float = 0.0) -> None:
        self.allowed = frozenset(allowed)
        self.num_examples = dict(num_examples or {})
        self.tolerance = tolerance
        self._noted: set[str] = set()  # what was logged once

    def note_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._noted and len(self._noted) < 256:
            self._noted.add(key)
            log.warning(message, *args)

    def trusted_examples(self, client: int, claimed: float) -> float:
        """The FedAvg weight of ``client``: its size from discovery, which the claim must match.

        ``|claimed - known| <= tolerance * known + 1/2`` (the count travels as a float), else
        PayloadError. A client whose size is unknown (it reported none at discovery) gets the
        median of the known sizes, or 1 if none is known: a reply never sets its own weight.
        """
        known = self.num_examples.get(client)
        if known is None:
            sizes = list(self.num_examples.values())
            weight = float(np.median(sizes)) if sizes else 1.0
            self.note_once("size", "client %d (and maybe others) reported no size at discovery: such replies "
                           "weigh %g (%s), whatever num-examples they claim (logged once)", client, weight,
                           "the median known size" if sizes else "no size is known: equal weights")
            return weight
        if not abs(claimed - known) <= self.tolerance * known + 0.5:
            raise PayloadError(f"metric {NUM_EXAMPLES!r} is {claimed:g}, but client {client} has {known} examples "
                               f"(reported at discovery)")
        return float(known)

    def __call__(self, client: int, metrics: Mapping[str, float]) -> dict[str, float]:
        """The allowed, finite metrics of a reply, with ``num-examples`` checked (:meth:`trusted_examples`)."""
        out = {}
        for key, value in metrics.items():
            if key not in self.allowed:
                self.note_once(f"metric:{key}", "reply metric %r is not one fedsim knows (%s): dropped, "
                               "this and later (logged once)", key, ", ".join(sorted(self.allowed)))
            elif math.isfinite(value):
                out[key] = value
        out[NUM_EXAMPLES] = self.trusted_examples(client, metrics[NUM_EXAMPLES])
        return out
