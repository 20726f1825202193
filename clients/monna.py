"""The MoNNA client task (``fedsim.task = "monna"``): momentum steps, then the half-step model.

Farhadkhani, Guerraoui, Gupta, Hoang, Pinot, Stephan, "Robust Collaborative Learning with
Linear Gradient Overhead", ICML 2023 (PMLR 202), https://arxiv.org/abs/2209.10931
(Algorithm 1). The server (:mod:`fedsim.strategies.monna`) sends client ``i`` its own
model ``theta_i``; the client, with its momentum ``m_i`` kept in ``Context.state``::

    g_i = grad loss_i(theta_i; minibatch)        # one minibatch of spec.train.batch_size
    m_i = beta * m_i + (1 - beta) * g_i          # fedsim.robust.monna.momentum_update
    h_i = theta_i - lr_t * m_i                   # fedsim.robust.monna.half_step

and replies with ``h_i - theta_i`` encoded with the run's codec (so compression composes
with MoNNA; the server adds ``theta_i`` back). ``monna.local-steps = k > 1`` repeats the
step ``k`` times from the half-step model before replying (a deviation from the paper's one
step per communication, for short benchmarks); ``k = 1`` is the paper.

Byzantine clients (``job.attack``): a data attack (label flipping) changes the labels the
gradients are computed on; any client attack then replaces the step ``h_i - theta_i`` by
``attack.corrupt(h_i - theta_i)`` (e.g. Gaussian noise, or its own step with the sign
flipped), exactly as the ``train`` task corrupts its update. Omniscient attacks run on the
server, on the decoded half-step models.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from fedsim.codecs.cycle import encode_round
from fedsim.codecs.model import model_vector, split_vector, tensor_infos
from fedsim.data.datasets import load_dataset, load_partition
from fedsim.keys import ENCODE_S, MONNA_TASK, NUM_EXAMPLES, STEPS, TRAIN_LOSS, TRAIN_S
from fedsim.keys import MONNA_BETA_KEY as BETA_KEY
from fedsim.keys import MONNA_LR_KEY as LR_KEY
from fedsim.keys import MONNA_STEPS_KEY as STEPS_KEY
from fedsim.robust.monna import MomentumState, client_step

from .tasks import TASKS, Job, TaskResult, build_codec

if TYPE_CHECKING:  # torch only for the annotation: the module loads on numpy-only installs
    from torch import nn

MOMENTUM_KEY = "monna.momentum"  # the store key of m_i (codec state keys are "i.field")


def minibatch(num: int, batch: int, rng: np.random.Generator) -> np.ndarray:
    """``min(batch, num)`` distinct indices in ``[0, num)``, drawn with ``rng``."""
    if num < 1:
        raise ValueError("a client needs at least one example")
    return rng.choice(num, size=min(batch, num), replace=False)


def gradient(model: nn.Module, names: list[str], theta: list[np.ndarray], x: np.ndarray,
             y: np.ndarray) -> tuple[np.ndarray, float]:
    """Flat float32 gradient of the mean cross-entropy at ``theta`` (state-dict order), and
    the loss. Tensors without a gradient (buffers) get 0."""
    import torch
    from torch import nn

    from . import torch_trainer as tt

    tt.set_weights(model, theta)
    model.train()
    model.zero_grad()
    loss = nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    params = dict(model.named_parameters())
    grads = [getattr(params.get(name), "grad", None) for name in names]
    return model_vector([np.zeros(t.shape, np.float32) if g is None else g.detach().numpy()
                         for g, t in zip(grads, theta)]), float(loss.detach())


@TASKS.register(MONNA_TASK)
def monna(job: Job) -> TaskResult:
    """One MoNNA step (or ``monna.local-steps``); reply ``h_i - theta_i`` through the codec."""
    from . import torch_trainer as tt
    from .trainer import _torch_model

    lr, beta = job.number(LR_KEY), job.number(BETA_KEY)
    steps = job.integer(STEPS_KEY, 1)
    names, theta = job.model()
    shapes = [t.shape for t in theta]
    flat = model_vector(theta)
    t0 = time.perf_counter()

    spec = job.spec
    ds = load_dataset(spec.data, spec.seed)
    x, y = load_partition(spec.data, spec.seed, job.client)
    if job.attack is not None:
        y = job.attack.corrupt_labels(y, ds.num_classes)
    tt.one_thread()
    model = _torch_model(spec.model.model_dump_json(), ds.input_shape, ds.num_classes)

    saved = job.store.load()
    mom = saved.pop(MOMENTUM_KEY, None)
    state = MomentumState(momentum=np.zeros_like(flat) if mom is None else np.asarray(mom, np.float32))
    if state.momentum.shape != flat.shape:
        raise ValueError(f"stored momentum has {state.momentum.size} entries, the model {flat.size}")
    rng = np.random.default_rng(job.seed + [0x6D6F])
    h, losses = flat, []
    for _ in range(steps):
        idx = minibatch(len(y), spec.train.batch_size, rng)
        g, loss = gradient(model, names, split_vector(h, shapes), x[idx], y[idx])
        h, state = client_step(h, g, state, beta, lr)  # m = beta m + (1-beta) g;  h = theta - lr m
        h = h.astype(np.float32)
        losses.append(loss)
    step = split_vector(h - flat, shapes)
    if job.attack is not None:
        step = job.attack.corrupt(step, np.random.default_rng(job.seed + [0xA77]))
    t1 = time.perf_counter()

    infos = tensor_infos([(n, s) for n, s in zip(names, shapes)])
    payload, codec_state = encode_round(build_codec(spec.codec), step, infos, saved, spec.seed, job.round, job.client)
    job.store.save({**codec_state, MOMENTUM_KEY: state.momentum.astype(np.float32)})
    return payload, {
        NUM_EXAMPLES: float(len(y)), TRAIN_LOSS: float(np.mean(losses)), STEPS: float(steps),
        TRAIN_S: t1 - t0, ENCODE_S: time.perf_counter() - t1,
    }
