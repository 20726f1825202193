"""Nested dithered quantization: a reference group sends DQSG, the rest NDQSG.

A. Abdi and F. Fekri, "Nested Dithered Quantization for Communication Reduction in
Distributed Training", arXiv:1904.01197 (2019): section 3 (DQSG), section 4 (NDQSG and
decoding with side information at the server). See ``/work/shared/ALGORITHMS.md``
section 4 and the codecs :mod:`fedsim.codecs.dithered` / :mod:`fedsim.codecs.nested`.

Each round the sampled clients are split, seeded by (run seed, round), into a
*reference* group of ``reference_clients`` clients, which encode their update with DQSG
(``M = M1``, the nested codec's bucket and scale dtype), and a *nested* group, which
encodes with NDQSG (``rho = M1 // M2`` symbols). Each client learns its codec from the
config key ``fedsim.codec`` of its message. The server then

1. validates every payload against the codec of the sender's group;
2. decodes the reference group: ``y`` = their mean, tensor by tensor;
3. decodes the nested clients one at a time, in client order, with
   ``g_hat_i = decode_with_side_info(payload_i, y, constrain=True)``: a fine index beyond
   ``ceil(alpha*M1)`` is certainly wrong (a *detectable* failure) and is moved to the
   nearest admissible member of its coset. A client whose detectable failures are at
   most ``client_failure_threshold`` of its coordinates (default 1: every client) is
   accepted and folded into the running mean, ``y <- y + (g_hat_i - y)/(k + 1)``; the
   others are left out. When ``2*ceil(alpha*M1) + 1 <= rho`` every coset has a single
   admissible member, the repair is exact and no client is ever left out
   (:func:`repair_is_exact`);
4. aggregates as FedAvg over the decoded updates used, weighted by examples:
   ``x <- x + sum_i n_i g_hat_i / sum_i n_i``.

No reference update this round (none sampled alive, all dropped or rejected): the
side information is the previous aggregated update (``side_info_stale = 1`` in the
metrics) until one nested decode is accepted. If then more than
``stale_failure_threshold`` of the nested coordinates have detectable failures, every
nested update is discarded and the model is kept for the round (their bytes were sent
and are still counted). With no earlier aggregate either, the round is skipped.

Why every client is kept by default: on FL updates (MNIST-5k CNN, 2 local epochs) a client's
update differs from the mean of the others by 60-110 % of its own energy, so with
``alpha = 1`` every nested client has failures (2-9 % of its coordinates, none decodes
cleanly). Rejecting such a client throws away its ~95 % correct coordinates and keeps
exactly the clients closest to the references: under label skew the aggregate drifts
towards the references' classes, and loses accuracy (the benchmark in the note). A
repaired failure only pulls one coordinate towards ``y``. A smaller ``alpha`` with the
``unbiased`` estimator makes failures rare (``alpha = 0.4``: 0.2-1.7 % of the
coordinates); the ``mmse`` estimator with ``alpha < 1`` decodes
``(1 - alpha^2)*y + alpha^2*g + noise``, which weighs the reference group's update into
every nested client's (a warning says so). See ``docs/nested-dithering.md``.

Per round :attr:`NestedDitheredQuantization.round_metrics` reports the bits per
coordinate of each group (``8 * sum payload bytes / (clients * coordinates)``), the
detectable failure fraction of the nested group, the leave-one-out failure estimate
from the reference group (:func:`fedsim.codecs.nested.estimate_failures_loo`, with at
least 2 references), the stale flag and the group counts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedsim.codecs.base import Payload, PayloadError, TensorInfo, payload_nbytes
from fedsim.codecs.dithered import Dqsg
from fedsim.codecs.model import contexts, unflatten
from fedsim.codecs.model import validate_update as validate_model_payload
from fedsim.codecs.nested import Ndqsg, estimate_failures_loo
from fedsim.config import PluginSpec
from fedsim.engine.view import PayloadStrategy, RoundView
from fedsim.keys import ARRAYS, CODEC_KEY, CONFIG, NUM_EXAMPLES, TRAIN_LOSS
from fedsim.registry import STRATEGIES
from fedsim.wire import to_record

from .server_evaluated import ServerEvaluatedStrategy

log = logging.getLogger("fedsim")

REFERENCE, NESTED = "reference", "nested"
Update = list[np.ndarray]

__all__ = ["NestedDitheredQuantization", "NestedDecode", "bits_per_coordinate", "decode_nested_group",
           "reference_codec", "reference_group", "repair_is_exact", "weighted_mean"]


# ----------------------------------------------------------------------------- maths


def reference_group(clients: Sequence[int], size: int, seed: int, server_round: int) -> list[int]:
    """The ``min(size, len(clients))`` reference clients of a round, drawn from (seed, round).

    A fresh seeded draw each round rotates the reference role over the clients.
    """
    pool = np.asarray(sorted(clients), dtype=np.int64)
    rng = np.random.default_rng([seed, server_round, 0x4EF])
    return sorted(int(c) for c in rng.choice(pool, size=min(size, pool.size), replace=False))


def reference_codec(nested: Ndqsg) -> Dqsg:
    """The reference group's DQSG: ``M = M1``, the nested codec's bucket and scale dtype."""
    return Dqsg(levels=nested.m1, bucket=nested.bucket, scale_dtype=nested.scale_dtype)


def repair_is_exact(codec: Ndqsg) -> bool:
    """Whether range-constrained decoding always recovers the fine index, whatever ``y``.

    The encoder's fine index obeys ``|q1| <= b = ceil(alpha*M1)``: ``2b + 1`` values. When
    ``2b + 1 <= rho`` each coset (``q1 mod rho``) holds at most one of them, so moving a
    decoded index into range by multiples of ``rho`` (:func:`fedsim.codecs.nested.constrain_fine_index`)
    lands on the true one: every failure is detectable and repaired exactly (e.g. ``M1 = 3``,
    ``rho = 3``, ``alpha = 1/3``: NDQSG is then a 3-level DQSG of step ``||g||_inf``).
    """
    return 2 * math.ceil(codec.alpha * codec.m1) + 1 <= codec.rho


def bits_per_coordinate(nbytes: Sequence[int], coordinates: int) -> float:
    """``8 * sum_i bytes_i / (clients * coordinates)``; ``nan`` for an empty group."""
    if not nbytes:
        return float("nan")
    return 8.0 * float(sum(nbytes)) / (len(nbytes) * coordinates)


def weighted_mean(updates: Sequence[Update], weights: Sequence[float]) -> Update:
    """FedAvg of updates, tensor by tensor: ``sum_i w_i g_i / sum_i w_i`` (float32)."""
    w = np.asarray(weights, dtype=np.float64)
    if not updates or w.size != len(updates) or not (w > 0).all():
        raise ValueError(f"weighted_mean needs one positive weight per update; got {w.tolist()}")
    w = w / w.sum()
    return [sum((wi * u[t].astype(np.float64) for wi, u in zip(w, updates)),
                np.zeros(updates[0][t].shape)).astype(np.float32)
            for t in range(len(updates[0]))]


def _fold(mean: Update, count: int, update: Update) -> None:
    for m, u in zip(mean, update):
        if count == 0:
            m[...] = u  # a mean of nothing yet (stale side information): y = g
        else:
            m += (u - m) / np.float32(count + 1)  # y_{k+1} = y_k + (g - y_k)/(k + 1)


@dataclass
class NestedDecode:
    """What :func:`decode_nested_group` found."""

    accepted: dict[int, Update] = field(default_factory=dict)  # client -> decoded update
    rejected: list[int] = field(default_factory=list)  # clients with detectable failures
    detectable: int = 0  # detectable failures over every nested decode
    coordinates: int = 0  # coordinates decoded (clients x model size)
    side: Update = field(default_factory=list)  # the running mean after the last decode

    @property
    def failure_fraction(self) -> float:
        return self.detectable / self.coordinates if self.coordinates else float("nan")


def decode_nested_group(
    codec: Ndqsg,
    payloads: Mapping[int, Payload],
    infos: Sequence[TensorInfo],
    seed: int,
    server_round: int,
    side: Update,
    count: int,
    max_failure_fraction: float = 0.0,
    screen: Callable[[int, Update], bool] | None = None,
) -> NestedDecode:
    """Decode nested clients in client order with the running mean as side information.

    Parameters
    ----------
    payloads : mapping of client id to its validated flat payload (keys ``"i.field"``).
    side : the initial side information, one array per tensor (copied, not modified).
    count : how many updates ``side`` is the mean of: the number of decoded references,
        or 0 for stale side information (the previous aggregate), which the first
        accepted nested update then replaces.
    max_failure_fraction : a client is accepted (and folded into the running mean) when its
        detectable failures are at most this fraction of its coordinates, or when the
        codec's repair is exact (:func:`repair_is_exact`): its failures are then all fixed.
    screen : optional ``screen(client, update) -> bool``: an update it refuses (the
        wrapper's finiteness and norm checks, which reject the client) is left out.
    """
    exact = repair_is_exact(codec)
    mean = [np.array(y, dtype=np.float32, copy=True) for y in side]
    out = NestedDecode()
    for client in sorted(payloads):
        parts = unflatten(payloads[client], len(infos))
        stats: dict[str, int] = {}
        g = [codec.decode_with_side_info(p, info, ctx, y, stats, constrain=True)
             for p, info, ctx, y in zip(parts, infos, contexts(len(infos), seed, server_round, client), mean)]
        out.detectable += stats["detectable_failures"]
        out.coordinates += stats["coordinates"]
        if not exact and stats["detectable_failures"] > max_failure_fraction * stats["coordinates"]:
            out.rejected.append(client)
            continue
        if screen is not None and not screen(client, g):
            continue
        out.accepted[client] = g
        _fold(mean, count, g)
        count += 1
    out.side = mean
    return out


def _loo_estimate(refs: Sequence[Update], codec: Ndqsg, infos: Sequence[TensorInfo]) -> float | None:
    """Leave-one-out failure estimate, averaged over tensors by size; None with < 2 refs."""
    if len(refs) < 2:
        return None
    per = [estimate_failures_loo([r[t] for r in refs], codec.m1, codec.rho, codec.alpha, codec.bucket)
           for t in range(len(infos))]
    return float(np.average(per, weights=[i.numel for i in infos]))


def _finite(x: float) -> float | None:
    return x if np.isfinite(x) else None  # metrics rows are JSON: no NaN


# -------------------------------------------------------------------------- strategy


@STRATEGIES.register("ndqsg-nested")
class NestedDitheredQuantization(ServerEvaluatedStrategy, PayloadStrategy):
    """Reference group on DQSG, nested group on NDQSG, decoded with side information.

    The run's codec (``codec:`` in the config) must be ``ndqsg``; the reference codec is
    derived from it (:func:`reference_codec`). See the module docstring for the round.

    Parameters
    ----------
    reference_clients : int
        Reference (DQSG) clients per round, ``>= 1`` (capped at the number sampled). 2 or
        more also give the leave-one-out failure estimate.
    client_failure_threshold : float
        A nested client is used when at most this fraction of its coordinates has
        detectable failures (0: only clients with none; 1, the default: every client, its
        detectable failures repaired). Ignored when :func:`repair_is_exact`.
    stale_failure_threshold : float
        With stale side information, the nested updates are discarded when more than
        this fraction of their coordinates has detectable failures (not when
        :func:`repair_is_exact`).
    """

    def __init__(self, reference_clients: int = 2, client_failure_threshold: float = 1.0,
                 stale_failure_threshold: float = 0.01) -> None:
        if not isinstance(reference_clients, int) or isinstance(reference_clients, bool) or reference_clients < 1:
            raise ValueError(
                f"ndqsg-nested needs reference_clients >= 1 (the reference group's DQSG updates "
                f"are the nested group's side information); got {reference_clients!r}")
        for name, v in (("client_failure_threshold", client_failure_threshold),
                        ("stale_failure_threshold", stale_failure_threshold)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"ndqsg-nested: {name} is a fraction in [0, 1]; got {v}")
        self.client_failure_threshold = float(client_failure_threshold)
        self.reference_clients = reference_clients
        self.stale_failure_threshold = float(stale_failure_threshold)
        self.round_metrics: dict[str, Any] = {}
        self._groups: dict[int, str] = {}  # client -> group, this round
        self._model: ArrayRecord | None = None  # the model sent this round
        self._last_update: Update | None = None  # the last aggregated update (stale side info)

    # -- the engine's seam (fedsim.engine.view) ----------------------------------------
    def check(self, view: RoundView) -> None:
        """The run's codec must be ndqsg; warn of the mmse estimator's pull towards the references."""
        codec = self._nested_codec(view)
        if codec.estimator == "mmse" and codec.alpha < 1.0:
            log.warning(
                "ndqsg-nested: the mmse estimator with alpha=%g decodes each nested update as "
                "%.2f*y + %.2f*g (+ noise), y the reference group's mean: the aggregate leans towards "
                "the references; estimator 'unbiased' keeps the wider decodable region without the bias",
                codec.alpha, 1.0 - codec.alpha ** 2, codec.alpha ** 2)

    @staticmethod
    def _nested_codec(view: RoundView) -> Ndqsg:
        if not isinstance(view.codec, Ndqsg):
            raise ValueError(
                f"strategy ndqsg-nested needs codec ndqsg (its M1 and bucket also define the reference "
                f"group's dqsg); got codec {getattr(view.codec, 'name', type(view.codec).__name__)!r}")
        return view.codec

    @classmethod
    def _codec_specs(cls, view: RoundView) -> dict[str, str]:
        n = cls._nested_codec(view)
        r = reference_codec(n)
        return {REFERENCE: PluginSpec(name=r.name, params=r.params()).model_dump_json(),
                NESTED: PluginSpec(name=n.name, params=n.params()).model_dump_json()}

    # -- train ------------------------------------------------------------------------
    def configure(self, view: RoundView, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        nodes = sorted(grid.get_node_ids())
        clients = {node: view.node_to_client[node] for node in nodes}
        refs = set(reference_group(list(clients.values()), self.reference_clients, view.seed, view.server_round))
        self._groups = {c: REFERENCE if c in refs else NESTED for c in clients.values()}
        self._model = arrays
        self.round_metrics = {}
        specs = self._codec_specs(view)
        out = []
        for node, client in clients.items():
            cfg = ConfigRecord(dict(config))
            cfg[CODEC_KEY] = specs[self._groups[client]]
            out.append(Message(RecordDict({ARRAYS: arrays, CONFIG: cfg}), dst_node_id=node,
                               message_type=MessageType.TRAIN))
        return out

    def validate(self, payload: Payload, client: int, view: RoundView) -> None:
        """Validate ``payload`` against the codec of ``client``'s group (PayloadError if bad)."""
        group = self._groups.get(client)
        if group is None:
            raise PayloadError(f"client {client} was not sent a training message this round")
        nested = self._nested_codec(view)
        codec = reference_codec(nested) if group == REFERENCE else nested
        validate_model_payload(codec, payload, view.infos)

    def aggregate(self, view: RoundView, payloads: Mapping[int, Payload],
                  metrics: Mapping[int, Mapping[str, float]]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        assert self._model is not None
        nested_codec = self._nested_codec(view)
        reference = reference_codec(nested_codec)
        server_round, infos, seed = view.server_round, view.infos, view.seed
        coords = sum(i.numel for i in infos)
        got: dict[str, dict[int, tuple[Payload, Mapping[str, float]]]] = {REFERENCE: {}, NESTED: {}}
        for client, payload in payloads.items():
            got[self._groups[client]][client] = (payload, metrics[client])
        nbytes = {group: [payload_nbytes(p) for p, _ in got[group].values()] for group in (REFERENCE, NESTED)}
        m: dict[str, Any] = {
            "reference_clients": len(got[REFERENCE]), "nested_clients": len(got[NESTED]),
            "reference_bits_per_coord": _finite(bits_per_coordinate(nbytes[REFERENCE], coords)),
            "nested_bits_per_coord": _finite(bits_per_coordinate(nbytes[NESTED], coords)),
            "bits_per_coord": _finite(bits_per_coordinate(nbytes[REFERENCE] + nbytes[NESTED], coords)),
            "side_info_stale": 0, "nested_accepted": 0, "nested_failure_fraction": None,
            "failure_estimate_loo": None, "nested_discarded": 0, "round_skipped": 0,
        }
        self.round_metrics = m
        refs: dict[int, Update] = {}
        for client, (payload, _) in sorted(got[REFERENCE].items()):
            parts = unflatten(payload, len(infos))
            ref = [reference.decode(p, info, c)
                   for p, info, c in zip(parts, infos, contexts(len(infos), seed, server_round, client))]
            if view.screen(client, ref):  # finite, within validation.max_update_norm
                refs[client] = ref
        m["failure_estimate_loo"] = _loo_estimate(list(refs.values()), nested_codec, infos)
        if refs:
            side, count = [np.mean([r[t] for r in refs.values()], axis=0) for t in range(len(infos))], len(refs)
        elif self._last_update is not None:
            side, count = self._last_update, 0
            m["side_info_stale"] = 1
        else:
            m["round_skipped"] = 1
            log.warning("round %d: no reference update and no earlier aggregate for side information; "
                        "round skipped (model kept)", server_round)
            return None, None
        nested = decode_nested_group(nested_codec, {c: p for c, (p, _) in got[NESTED].items()},
                                     infos, seed, server_round, side, count, self.client_failure_threshold,
                                     screen=view.screen)
        m["nested_failure_fraction"] = _finite(nested.failure_fraction)
        if (not refs and nested.coordinates and not repair_is_exact(nested_codec)
                and nested.failure_fraction > self.stale_failure_threshold):
            m["nested_discarded"] = len(got[NESTED])
            log.warning("round %d: stale side information and %.2f%% detectable failures (> %.2f%%): nested "
                        "updates discarded, model kept", server_round, 100 * nested.failure_fraction,
                        100 * self.stale_failure_threshold)
            return None, None
        m["nested_accepted"] = len(nested.accepted)
        m["nested_discarded"] = len(nested.rejected)
        decoded = {**refs, **nested.accepted}
        if not decoded:
            return None, None
        decoded.update(view.forge_updates(decoded))  # omniscient attacks, if any
        used = sorted(decoded)
        weights = [metrics[c][NUM_EXAMPLES] for c in used]
        update = weighted_mean([decoded[c] for c in used], weights)  # sum_i n_i g_i / sum_i n_i
        self._last_update = update
        old = self._model.to_numpy_ndarrays()
        new = {info.name: (b + d).astype(np.float32) for info, b, d in zip(infos, old, update)}
        loss = float(np.average([metrics[c][TRAIN_LOSS] for c in used], weights=weights))
        return to_record(new), MetricRecord({TRAIN_LOSS: loss, NUM_EXAMPLES: float(sum(weights))})


    def summary(self) -> None:
        log.info("ndqsg-nested: %d reference client(s) a round, stale-side-info failure threshold %.3f",
                 self.reference_clients, self.stale_failure_threshold)
