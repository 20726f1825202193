"""The ``ef21`` client task: one gradient, one compressed difference (EF21 / EF21-W).

The EF21-W strategy (:mod:`fedsim.strategies.ef21w`) sends the model ``x`` and, in the
config, what this client's round needs (keys ``ef21.*``, written by
:func:`fedsim.ef21.client.client_config`):

``ef21.scale`` (float)   ``s_i = n w_i`` (1 for EF21, or before the weights are known)
``ef21.acked`` (int)     the last round whose message from this client the server added
``ef21.dense`` (bool)    send the uncompressed ``(grad - h_i)/s_i`` (first message)
``ef21.want-L`` (bool)   report ``L_i`` in the metrics (``ef21-L``)
``ef21.wire`` (str)      ``dense`` | ``topk`` | ``codec``; ``ef21.k`` for topk
``ef21.dtype`` (str)     float32 | float64: values on the wire
``ef21.batch`` (int)     minibatch size for EF21-SGD; 0 = full batch

The client evaluates its gradient once at ``x`` (full batch, or a minibatch drawn
from the job's seed), runs :func:`fedsim.ef21.client.client_round` with the state
kept in Flower's ``Context.state``, and replies with the encoded ``c_i``. Metrics:
``num-examples`` (m_i), ``train-loss`` (``f_i(x)``), and ``ef21-L`` when asked.
A Byzantine client's attack replaces its gradient before the step.
"""

from __future__ import annotations

import numpy as np

from fedsim.codecs.model import model_vector, tensor_infos
from fedsim.ef21.client import client_round, from_arrays, to_arrays
from fedsim.ef21.oracles import local_problem
from fedsim.ef21.wire import CodecWire, DenseWire, TopKWire, Wire
from fedsim.keys import (
    ARRAYS,
    EF21_ACKED_KEY,
    EF21_BATCH_KEY,
    EF21_DENSE_KEY,
    EF21_DTYPE_KEY,
    EF21_K_KEY,
    EF21_L,
    EF21_SCALE_KEY,
    EF21_TASK,
    EF21_WANT_L_KEY,
    EF21_WIRE_KEY,
    NUM_EXAMPLES,
    TRAIN_LOSS,
)

from .tasks import TASKS, Job, TaskResult, build_codec


def _wire(job: Job, kind: str, d: int, shapes: list[tuple[str, tuple[int, ...]]]) -> Wire:
    cfg = job.config
    dtype = str(cfg[EF21_DTYPE_KEY])
    if kind == "dense":
        return DenseWire(d, dtype)
    if kind == "topk":
        return TopKWire(job.integer(EF21_K_KEY), d, dtype)
    if kind == "codec":
        return CodecWire(build_codec(job.spec.codec), tensor_infos(shapes), alpha=1.0)
    raise ValueError(f"unknown EF21 wire {kind!r}; known: dense, topk, codec")


@TASKS.register(EF21_TASK)
def ef21(job: Job) -> TaskResult:
    """One EF21-W client round; see the module docstring."""
    cfg = job.config
    record = job.message.content.array_records[ARRAYS]
    shapes = [(k, tuple(a.shape)) for k, a in record.items()]
    x = model_vector(record.to_numpy_ndarrays(), np.float64)
    problem = local_problem(job.spec, job.client)
    if problem.dim != x.size:
        raise ValueError(f"the model sent has {x.size} coordinates, the configured model {problem.dim}")
    rng = np.random.default_rng(job.seed + [0xEF21])
    batch_size = job.integer(EF21_BATCH_KEY, 0)
    batch = None
    if 0 < batch_size < problem.num_examples:  # EF21-SGD: a minibatch without replacement
        batch = np.sort(rng.choice(problem.num_examples, size=batch_size, replace=False))
    loss, grad = problem.loss_grad(x, batch)
    if job.attack is not None:
        grad = model_vector(job.attack.corrupt([grad], rng), np.float64)

    dense = bool(cfg[EF21_DENSE_KEY])
    wire = _wire(job, "dense" if dense else str(cfg[EF21_WIRE_KEY]), x.size, shapes)
    sent: dict[str, np.ndarray] = {}

    def compress(v: np.ndarray) -> np.ndarray:
        payload, decoded = wire.encode(v, job.spec.seed, job.round, job.client)
        sent.update(payload)
        return decoded  # c_i as the server decodes it: both sides add the same vector

    store = job.store
    state = from_arrays(store.load(), x.size)
    _, state = client_round(state, grad, job.number(EF21_SCALE_KEY), compress,
                            job.round, job.integer(EF21_ACKED_KEY))
    store.save(to_arrays(state))
    metrics = {NUM_EXAMPLES: float(problem.num_examples), TRAIN_LOSS: float(loss)}
    if bool(cfg.get(EF21_WANT_L_KEY, False)):
        metrics[EF21_L] = float(problem.smoothness(x))
    return sent, metrics
