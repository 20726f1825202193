"""numpy-only local trainer for edge devices: multinomial logistic regression and a
one-hidden-layer MLP, trained with minibatch SGD on the cross-entropy.

The parameters are a dict of numpy arrays with exactly the names, shapes and layout of
the torch models' ``state_dict()``, so the server's torch model and an edge client
interoperate without any conversion:

=========  ===============  ==========  ====================================
model      key              shape       torch module
=========  ===============  ==========  ====================================
logreg     ``linear.weight``  (C, D)    ``self.linear = nn.Linear(D, C)``
logreg     ``linear.bias``    (C,)
mlp        ``fc1.weight``     (H, D)    ``self.fc1 = nn.Linear(D, H)``, ReLU
mlp        ``fc1.bias``       (H,)
mlp        ``fc2.weight``     (C, H)    ``self.fc2 = nn.Linear(H, C)``
mlp        ``fc2.bias``       (C,)
=========  ===============  ==========  ====================================

Inputs are float images in [0, 1] flattened row-major (C order, as ``torch.flatten``)
to D features; logits are ``x @ W.T + b`` as in ``torch.nn.Linear``; the loss is the
mean cross-entropy over the batch (``torch.nn.functional.cross_entropy``); the update is
``torch.optim.SGD(params, lr, momentum, weight_decay)`` (dampening 0, no Nesterov):
``g = grad + wd * p``, ``v = g`` at the first step and ``v <- mu * v + g`` after it,
``p <- p - lr * v``, with the momentum buffer starting afresh at every call (as a new
torch optimizer each round does). Arithmetic is done in the parameters' dtype (float32
from the server).

Nothing here imports torch: this module is what ``pip install fedsim[edge]`` runs.
Randomness (initialisation, batch order) comes only from explicit seeds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import numpy as np

from fedsim.keys import NUM_EXAMPLES, STEPS, TRAIN_LOSS

Params = dict[str, np.ndarray]

LOGREG_KEYS = ("linear.weight", "linear.bias")
MLP_KEYS = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
DEFAULT_HIDDEN = 128
EVAL_CHUNK = 4096


# --------------------------------------------------------------------------- parameters


def model_kind(params: Mapping[str, np.ndarray]) -> str:
    """``"logreg"`` or ``"mlp"`` from the parameter names; checks the shapes agree."""
    keys = set(params)
    if keys == set(LOGREG_KEYS):
        w, b = params["linear.weight"], params["linear.bias"]
        if w.ndim != 2 or b.shape != (w.shape[0],):
            raise ValueError(f"logreg needs linear.weight (C, D) and linear.bias (C,); got {w.shape}, {b.shape}")
        return "logreg"
    if keys == set(MLP_KEYS):
        w1, b1, w2, b2 = (params[k] for k in MLP_KEYS)
        if w1.ndim != 2 or b1.shape != (w1.shape[0],) or w2.shape[1:] != (w1.shape[0],) or b2.shape != (w2.shape[0],):
            raise ValueError(
                "mlp needs fc1.weight (H, D), fc1.bias (H,), fc2.weight (C, H), fc2.bias (C,); got "
                + ", ".join(str(params[k].shape) for k in MLP_KEYS)
            )
        return "mlp"
    raise ValueError(
        f"unknown parameter names {sorted(keys)}: expected {list(LOGREG_KEYS)} (logreg) or {list(MLP_KEYS)} (mlp)"
    )


def init_params(
    kind: str, num_features: int, num_classes: int, seed: int, hidden: int = DEFAULT_HIDDEN
) -> Params:
    """Initialise like ``torch.nn.Linear``: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Same distribution as torch's default (``kaiming_uniform_(a=sqrt(5))``), not the same
    draws: a federated run takes its initial model from the server anyway.
    """
    if num_features < 1 or num_classes < 2 or hidden < 1:
        raise ValueError(
            f"need num_features >= 1, num_classes >= 2, hidden >= 1; got {num_features}, {num_classes}, {hidden}"
        )
    rng = np.random.default_rng(seed)

    def linear(fan_in: int, fan_out: int) -> tuple[np.ndarray, np.ndarray]:
        bound = 1.0 / math.sqrt(fan_in)
        w = rng.uniform(-bound, bound, size=(fan_out, fan_in)).astype(np.float32)
        b = rng.uniform(-bound, bound, size=(fan_out,)).astype(np.float32)
        return w, b

    if kind == "logreg":
        w, b = linear(num_features, num_classes)
        return {"linear.weight": w, "linear.bias": b}
    if kind == "mlp":
        w1, b1 = linear(num_features, hidden)
        w2, b2 = linear(hidden, num_classes)
        return {"fc1.weight": w1, "fc1.bias": b1, "fc2.weight": w2, "fc2.bias": b2}
    raise ValueError(f"model kind must be 'logreg' or 'mlp'; got {kind!r}")


# --------------------------------------------------------------------------- maths


def flatten_inputs(x: np.ndarray, num_features: int, dtype: np.dtype) -> np.ndarray:
    """(N, ...) -> (N, D) row-major, in ``dtype``; checks D."""
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"inputs must be (N, ...) with N examples; got shape {x.shape}")
    features = int(np.prod(x.shape[1:]))
    if features != num_features:
        raise ValueError(f"inputs flatten to {features} features; the model expects {num_features}")
    return np.ascontiguousarray(x.reshape(x.shape[0], features), dtype=dtype)


def _check_labels(y: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be {n} integers; got shape {y.shape}, dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}); got range [{y.min()}, {y.max()}]")
    return y.astype(np.int64, copy=False)


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log softmax, stable: ``z - max(z) - log(sum(exp(z - max(z))))``."""
    m = z.max(axis=1, keepdims=True)
    s = z - m
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def logits(params: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Forward pass on flattened inputs (N, D): logits (N, C)."""
    if model_kind(params) == "logreg":
        return x @ params["linear.weight"].T + params["linear.bias"]  # z = x W^T + b
    h = np.maximum(x @ params["fc1.weight"].T + params["fc1.bias"], 0.0)  # h = relu(x W1^T + b1)
    return h @ params["fc2.weight"].T + params["fc2.bias"]  # z = h W2^T + b2


def loss_and_grads(params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, Params]:
    """Mean cross-entropy over the batch and its gradient with respect to every parameter.

    With p = softmax(z) and one-hot Y, L = -(1/B) sum_i log p_{i, y_i} and
    dL/dz = (p - Y) / B; then for z = a W^T + b: dL/dW = (dL/dz)^T a, dL/db = sum_i dL/dz_i,
    dL/da = (dL/dz) W, and through the ReLU dL/dh_pre = dL/dh * [h_pre > 0].

    ``x`` is (B, D) already flattened, ``y`` (B,) int labels.
    """
    kind = model_kind(params)
    b = x.shape[0]
    if b == 0:
        raise ValueError("empty batch")
    if kind == "logreg":
        z = x @ params["linear.weight"].T + params["linear.bias"]
    else:
        h_pre = x @ params["fc1.weight"].T + params["fc1.bias"]
        h = np.maximum(h_pre, 0.0)
        z = h @ params["fc2.weight"].T + params["fc2.bias"]
    logp = log_softmax(z)
    rows = np.arange(b)
    loss = float(-logp[rows, y].mean())
    dz = np.exp(logp)
    dz[rows, y] -= 1
    dz /= b  # dL/dz = (p - Y) / B
    if kind == "logreg":
        return loss, {"linear.weight": dz.T @ x, "linear.bias": dz.sum(axis=0)}
    dh = (dz @ params["fc2.weight"]) * (h_pre > 0)
    return loss, {
        "fc1.weight": dh.T @ x,
        "fc1.bias": dh.sum(axis=0),
        "fc2.weight": dz.T @ h,
        "fc2.bias": dz.sum(axis=0),
    }


def batch_order(n: int, batch_size: int, epochs: int, seed: int) -> Iterator[np.ndarray]:
    """Index arrays of the minibatches: each epoch a fresh permutation from
    ``np.random.default_rng(seed)``, cut into batches of ``batch_size`` (the last may be
    smaller, as a torch DataLoader with shuffle=True, drop_last=False)."""
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        perm = rng.permutation(n)
        for start in range(0, n, batch_size):
            yield perm[start:start + batch_size]


# --------------------------------------------------------------------------- API


def train(
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    proximal_mu: float = 0.0,
) -> tuple[Params, dict[str, float | int]]:
    """Minibatch SGD (with heavy-ball momentum and L2 weight decay, as ``torch.optim.SGD``)
    on the mean cross-entropy; ``params`` is not modified.

    Parameters
    ----------
    params
        Model parameters by torch name (see the module docstring); their dtype is kept.
    x
        Inputs (N, ...) in [0, 1], flattened row-major to D features.
    y
        Integer labels (N,) in [0, C).
    epochs, batch_size, lr
        SGD schedule: ``epochs`` passes, minibatches of ``batch_size``, step ``lr``.
    seed
        Seeds the batch order (:func:`batch_order`).
    momentum, weight_decay
        ``mu`` in [0, 1) and ``wd`` >= 0 of the update in the module docstring.
    proximal_mu
        FedProx's proximal weight (Li et al., MLSys 2020, eq. 2): the objective gets
        ``proximal_mu / 2 * ||w - w0||^2`` with ``w0 = params``, so ``g += proximal_mu * (p - p0)``
        before weight decay and momentum, as in :func:`fedsim.clients.torch_trainer.train`.

    Returns
    -------
    (new_params, metrics)
        the reply metrics of :func:`fedsim.clients.torch_trainer.train`: ``num-examples``
        (N, the FedAvg weight), ``steps`` (minibatch steps taken) and ``train-loss`` (the
        mean over all examples seen of the loss of their batch before its step).
    """
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}")
    if not 0 <= momentum < 1 or weight_decay < 0 or proximal_mu < 0:
        raise ValueError(f"need 0 <= momentum < 1, weight_decay >= 0 and proximal_mu >= 0; got {momentum}, "
                         f"{weight_decay}, {proximal_mu}")
    model_kind(params)
    out = {k: np.array(v, copy=True) for k, v in params.items()}
    first = "linear.weight" if "linear.weight" in out else "fc1.weight"
    last_w = out["linear.weight"] if "linear.weight" in out else out["fc2.weight"]
    dtype = out[first].dtype
    xf = flatten_inputs(x, out[first].shape[1], dtype)
    n = xf.shape[0]
    if n == 0:
        raise ValueError("no training examples")
    yi = _check_labels(y, n, last_w.shape[0])
    step, mu, wd, prox = dtype.type(lr), dtype.type(momentum), dtype.type(weight_decay), dtype.type(proximal_mu)
    anchor = {k: np.array(v, dtype=dtype) for k, v in params.items()} if proximal_mu else {}
    velocity: Params = {}
    total, seen, steps = 0.0, 0, 0
    for idx in batch_order(n, batch_size, epochs, seed):
        loss, grads = loss_and_grads(out, xf[idx], yi[idx])
        for k, g in grads.items():
            g = g.astype(dtype, copy=False)
            if prox:
                g = g + prox * (out[k] - anchor[k])  # g = grad + mu_prox * (p - p0)
            if wd:
                g = g + wd * out[k]  # g = grad + wd * p
            if mu:
                v = velocity.get(k)
                g = velocity[k] = g.copy() if v is None else mu * v + g  # v <- mu * v + g
            out[k] -= step * g  # p <- p - lr * v
        total += loss * len(idx)
        seen += len(idx)
        steps += 1
    return out, {NUM_EXAMPLES: float(n), STEPS: float(steps), TRAIN_LOSS: total / seen}


def evaluate(params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``params`` on (x, y)."""
    model_kind(params)
    first = params["linear.weight"] if "linear.weight" in params else params["fc1.weight"]
    last_w = params["linear.weight"] if "linear.weight" in params else params["fc2.weight"]
    xf = flatten_inputs(x, first.shape[1], first.dtype)
    n = xf.shape[0]
    if n == 0:
        raise ValueError("no evaluation examples")
    yi = _check_labels(y, n, last_w.shape[0])
    loss_sum, correct = 0.0, 0
    for start in range(0, n, EVAL_CHUNK):  # bounded memory on small devices
        logp = log_softmax(logits(params, xf[start:start + EVAL_CHUNK]))
        yc = yi[start:start + EVAL_CHUNK]
        loss_sum += float(-logp[np.arange(len(yc)), yc].sum())
        correct += int((logp.argmax(axis=1) == yc).sum())
    return loss_sum / n, correct / n
