"""Client tasks: what a client does with a training message.

The strategy names the task in the message's config (``fedsim.task``; default
``"train"``), so one ClientApp serves every algorithm:

- ``train``: local epochs of SGD from the model received, then the update (local
  model minus the model received) encoded with the codec (FedAvg and friends, DGC,
  quantizers);
- other algorithms register their own (EF21: one gradient and a compressed
  difference; MoNNA: a momentum step and a half-step model).

A task is ``task(job: Job) -> (payload, metrics)``: a dict of numpy arrays (what goes
on the wire) and a dict of floats with at least ``num-examples`` and ``train-loss``.
Per-client state goes through ``job.store`` (Flower's ``Context.state``).

A strategy may give one client another codec than the run's (nested dithered
quantization: a reference group sends ``dqsg``, the rest ``ndqsg``): it puts the codec's
``PluginSpec`` JSON in the config key ``fedsim.codec`` (:data:`CODEC_KEY`), which
``train`` reads instead of ``spec.codec``. The codec is still built from the registry by
name, with its parameters validated by its constructor; nothing is unpickled. The
client's codec state goes through :func:`fedsim.codecs.cycle.encode_round` (restore,
encode, save); it is not keyed by codec: switching a client between *stateful* codecs
(error feedback) from round to round is not supported (the restore says which key is
missing).
"""

from __future__ import annotations

import functools
import json
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message

from fedsim.codecs.cycle import encode_round
from fedsim.codecs.model import tensor_infos
from fedsim.config import ClientSpec, PluginSpec
from fedsim.keys import ARRAYS, CODEC_KEY, ENCODE_S, PROXIMAL_MU_KEY, TRAIN_S, TRAIN_TASK
from fedsim.registry import CODECS, Registry
from fedsim.state import ContextStore

from .trainer import local_train, requested_backend

TaskResult = tuple[dict[str, np.ndarray], dict[str, float]]
TASKS: Registry[Callable[[Job], TaskResult]] = Registry("client task", "fedsim.client_tasks", ())


@functools.lru_cache(maxsize=16)
def _codec(name: str, params_json: str) -> Any:
    return CODECS.build(name, json.loads(params_json))


def build_codec(spec: PluginSpec) -> Any:
    """The codec ``spec`` names, built once per process and then reused: a codec holds
    its configuration only (its state is explicit, see :mod:`fedsim.codecs.base`)."""
    return _codec(spec.name, json.dumps(spec.params, sort_keys=True))


_LAST_MODEL: list[Any] = [None, None]  # [weak reference to an ArrayRecord, (names, float32 arrays)]


def decoded_model(record: ArrayRecord) -> tuple[list[str], list[np.ndarray]]:
    """The record's tensors as float32 arrays, decoded once per record object: a pool worker
    hands one shared record to all the clients of its round (``np.load`` of each tensor
    costs about as much as a small model's training step). Callers must not modify them."""
    ref, cached = _LAST_MODEL
    if ref is not None and ref() is record:
        return cached
    out = (list(record.keys()), [np.asarray(a, dtype=np.float32) for a in record.to_numpy_ndarrays()])
    _LAST_MODEL[:] = [weakref.ref(record), out]
    return out


def config_number(config: ConfigRecord, key: str, default: float | None = None) -> float:
    """``config[key]`` as a float, ``default`` when absent; ValueError naming the key when it is
    missing with no default, or not an int/float (bool included: True is not a step size)."""
    if key not in config:
        if default is None:
            raise ValueError(f"config {key!r} is missing")
        return float(default)
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"config {key!r} must be a number, got {type(value).__name__}")
    return float(value)


def config_integer(config: ConfigRecord, key: str, default: int | None = None) -> int:
    """``config[key]`` as an int (:func:`config_number`, and it must be a whole number)."""
    value = config_number(config, key, None if default is None else float(default))
    if not value.is_integer():
        raise ValueError(f"config {key!r} must be a whole number, got {value!r}")
    return int(value)


@dataclass
class Job:
    """Everything a task may use: the message, this node's context and the parsed config."""

    message: Message
    context: Context
    config: ConfigRecord
    spec: ClientSpec
    round: int
    client: int
    attack: Any = None

    def number(self, key: str, default: float | None = None) -> float:
        """The config value ``key`` as a float (``default`` when absent); ValueError naming the
        key when it is missing or not a number (a ConfigRecord value may be str, bytes, a list...)."""
        return config_number(self.config, key, default)

    def integer(self, key: str, default: int | None = None) -> int:
        """The config value ``key`` as an int; ValueError unless it is a whole number."""
        return config_integer(self.config, key, default)

    @property
    def store(self) -> ContextStore:
        return ContextStore(self.context)

    def model(self) -> tuple[list[str], list[np.ndarray]]:
        """The tensor names and float32 arrays of the model in the message (fresh copies)."""
        names, arrays = decoded_model(self.message.content.array_records[ARRAYS])
        return list(names), [a.copy() for a in arrays]

    def codec_spec(self) -> PluginSpec:
        """The codec this client encodes with: ``fedsim.codec`` if the strategy set it, else the run's."""
        if CODEC_KEY in self.config:
            return PluginSpec.model_validate_json(str(self.config[CODEC_KEY]))
        return self.spec.codec

    @property
    def seed(self) -> list[int]:
        """(run seed, round, client): the root of this job's randomness."""
        return [self.spec.seed, self.round, self.client]


def proximal_mu(config: ConfigRecord) -> float:
    """FedProx's ``proximal-mu`` from the message config (Flower's FedProx sets it; 0 if absent).

    A value that is not a finite number >= 0 is an error: the server sent it, and
    training with it would be meaningless."""
    mu = config.get(PROXIMAL_MU_KEY, 0.0)
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not 0 <= float(mu) < float("inf"):
        raise ValueError(f"config {PROXIMAL_MU_KEY!r} must be a finite number >= 0; got {mu!r}")
    return float(mu)


@TASKS.register(TRAIN_TASK)
def train(job: Job) -> TaskResult:
    """Local training (FedAvg's ``ClientUpdate``, McMahan et al. 2017, Alg. 1; FedProx's with
    ``proximal-mu``), then the update ``w_local - w^t`` encoded with the codec, whose state
    is kept per client (:mod:`fedsim.codecs.cycle`)."""
    names, start = job.model()
    t0 = time.perf_counter()
    new, metrics = local_train(job.spec, names, start, job.client, job.seed, job.attack,
                               backend=requested_backend(job.context.node_config),
                               proximal_mu=proximal_mu(job.config))
    update = [n - s for n, s in zip(new, start)]
    if job.attack is not None:
        update = job.attack.corrupt(update, np.random.default_rng(job.seed + [0xA77]))
    t1 = time.perf_counter()
    infos = tensor_infos([(n, a.shape) for n, a in zip(names, start)])
    payload, saved = encode_round(build_codec(job.codec_spec()), update, infos, job.store.load(),
                                  job.spec.seed, job.round, job.client)
    job.store.save(saved)
    metrics.update({TRAIN_S: t1 - t0, ENCODE_S: time.perf_counter() - t1})
    return payload, metrics
from . import ef21  # noqa: E402,F401  (registers the "ef21" task)
from . import monna as _monna  # noqa: E402,F401  (registers the "monna" task)
