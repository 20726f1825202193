"""Local training with torch: minibatch SGD for a number of epochs, seeded.

This is FedAvg's ``ClientUpdate`` (McMahan, Moore, Ramage, Hampson, Aguera y Arcas,
"Communication-Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017,
Algorithm 1): E epochs of minibatch SGD of size B from the global model ``w^t``. With
``proximal_mu = mu > 0`` it is FedProx's local problem (Li, Sahu, Zaheer, Sanjabi,
Talwalkar, Smith, "Federated Optimization in Heterogeneous Networks", MLSys 2020, Eq. 2):
``min_w F_k(w) + mu/2 ||w - w^t||^2``, whose gradient adds ``mu (w - w^t)`` to each
minibatch gradient. The SGD step itself is :func:`sgd_step` (``torch.optim.SGD``'s rule).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fedsim.keys import NUM_EXAMPLES, STEPS, TRAIN_LOSS

_THREADS_SET = False


def one_thread() -> None:
    """One torch thread per worker: with C actors on C cores, more threads only fight."""
    global _THREADS_SET
    if not _THREADS_SET:
        torch.set_num_threads(1)
        _THREADS_SET = True


def get_weights(model: nn.Module) -> list[np.ndarray]:
    return [t.detach().cpu().numpy().astype(np.float32, copy=True) for t in model.state_dict().values()]


def set_weights(model: nn.Module, weights: Sequence[np.ndarray]) -> None:
    sd = model.state_dict()
    if len(sd) != len(weights):
        raise ValueError(f"model has {len(sd)} tensors, got {len(weights)}")
    model.load_state_dict({k: torch.from_numpy(np.asarray(w, dtype=np.float32)).reshape(v.shape)
                           for (k, v), w in zip(sd.items(), weights)})


@torch.no_grad()
def sgd_step(params: Sequence[torch.Tensor], buffers: list[torch.Tensor | None], lr: float, momentum: float,
             weight_decay: float) -> None:
    """One step of SGD with momentum and weight decay, in place; as ``torch.optim.SGD``
    (dampening 0, no Nesterov; its single-tensor path, bit for bit), without building an
    optimizer per client (whose first construction imports torch's compiler, seconds)::

        d = grad + weight_decay * p
        buf = d (first step) or momentum * buf + d;  d = buf   (if momentum)
        p = p - lr * d
    """
    for i, p in enumerate(params):
        if p.grad is None:
            continue
        d = p.grad if weight_decay == 0 else p.grad.add(p, alpha=weight_decay)
        if momentum != 0:
            buf = buffers[i]
            if buf is None:
                buf = buffers[i] = torch.clone(d).detach()
            else:
                buf.mul_(momentum).add_(d)
            d = buf
        p.add_(d, alpha=-lr)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int, lr: float,
          momentum: float, weight_decay: float, seed: int, proximal_mu: float = 0.0) -> dict[str, float]:
    """Train in place; return num_examples, steps and the mean training loss.

    ``proximal_mu`` > 0 adds FedProx's proximal term (Li et al., "Federated Optimization in
    Heterogeneous Networks", MLSys 2020, eq. 2): the local objective is
    ``F_k(w) + mu/2 ||w - w^t||^2`` with ``w^t`` the model received, i.e. the gradient of
    each parameter gets ``mu (w - w^t)``. The reported loss is the data loss alone.
    """
    if proximal_mu < 0:
        raise ValueError(f"proximal_mu must be >= 0 (it weighs a squared distance); got {proximal_mu}")
    gen = torch.Generator().manual_seed(seed)
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu else []
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    params = [p for p in model.parameters() if p.requires_grad]
    buffers: list[torch.Tensor | None] = [None] * len(params)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    total, steps = 0.0, 0
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch_size):
            b = perm[start:start + batch_size]
            for p in params:
                p.grad = None
            loss = loss_fn(model(xt[b]), yt[b])
            loss.backward()
            if proximal_mu:
                with torch.no_grad():
                    for p, p0 in zip(model.parameters(), anchor):
                        if p.grad is not None:  # a parameter the loss does not reach stays at w^t
                            p.grad.add_(p - p0, alpha=proximal_mu)  # grad += mu (w - w^t)
            sgd_step(params, buffers, lr, momentum, weight_decay)
            total += float(loss.detach())
            steps += 1
    return {NUM_EXAMPLES: float(len(x)), STEPS: float(steps), TRAIN_LOSS: total / max(steps, 1)}


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 1024) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on (x, y)."""
    model.eval()
    loss_sum, correct = 0.0, 0
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    for start in range(0, len(x), batch_size):
        xb = torch.from_numpy(x[start:start + batch_size])
        yb = torch.from_numpy(y[start:start + batch_size])
        out = model(xb)
        loss_sum += float(loss_fn(out, yb))
        correct += int((out.argmax(1) == yb).sum())
    return loss_sum / len(x), correct / len(x)
