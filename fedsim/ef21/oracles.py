"""A client's local problem ``f_i`` for EF21: its loss, gradient and smoothness constant.

EF21 needs, per round, one gradient of ``f_i`` at the model ``x`` the server sent, and,
once, ``L_i`` (for EF21-W's weights and the theoretical step). ``f_i`` is the mean
training loss of the configured model on client i's partition:

* ``logreg-ncvx`` (:mod:`fedsim.problems.logreg_torch`): the EF21 papers' problem,
  computed with the numpy functions of :mod:`fedsim.problems.logreg` on
  ``A_i = [images, 1]``, ``b_i = 2 y - 1``; ``L_i`` is exact:
  ``lambda_max(A_i^T A_i)/(4 m_i) + 2 lam``.
* any other model: mean cross-entropy (plus ``model.regularizer(tensors)`` if it has one),
  gradients by torch autograd in float64; ``L_i`` is estimated by power iteration on
  Hessian-vector products at the point given (a local estimate, not a global bound).

The flat vector ``x`` is the model's state dict, tensors concatenated in order.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import numpy as np

from fedsim.problems import logreg

__all__ = ["LocalProblem", "LogRegProblem", "TorchProblem", "local_problem"]

POWER_ITERS = 30
POWER_RTOL = 1e-3  # stop when the Rayleigh quotient changes by less than this, relatively


class LocalProblem(Protocol):
    """``f_i`` of one client."""

    dim: int
    num_examples: int

    def loss_grad(self, x: np.ndarray, batch: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        """``(f_i(x), grad f_i(x))``, over the examples ``batch`` (indices) or all of them."""

    def smoothness(self, x: np.ndarray) -> float:
        """``L_i`` (exact where known, else an estimate at ``x``)."""


class LogRegProblem:
    """The papers' logistic regression on ``(A, b)`` (numpy, float64)."""

    def __init__(self, A: np.ndarray, b: np.ndarray, lam: float) -> None:
        self.A, self.b, self.lam = A, b, lam
        self.num_examples, self.dim = A.shape

    @classmethod
    def from_images(cls, x: np.ndarray, y: np.ndarray, lam: float) -> LogRegProblem:
        """``A = [flattened images, 1]`` (weight then bias, as the model's state dict), ``b = 2y - 1``."""
        A = np.hstack([x.reshape(len(x), -1).astype(np.float64), np.ones((len(x), 1))])
        return cls(A, 2.0 * y.astype(np.float64) - 1.0, lam)

    def loss_grad(self, x: np.ndarray, batch: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        A, b = (self.A, self.b) if batch is None else (self.A[batch], self.b[batch])
        return logreg.loss(x, A, b, self.lam), logreg.grad(x, A, b, self.lam)

    def smoothness(self, x: np.ndarray) -> float:
        return self._L

    @functools.cached_property
    def _L(self) -> float:
        return logreg.smoothness(self.A, self.lam)  # lambda_max(A^T A)/(4m) + 2 lam


class TorchProblem:
    """Mean cross-entropy of a torch model, in float64.

    A model with a method ``regularizer(tensors)`` has that added to the loss (it gets
    the parameter tensors, in state-dict order, as functions of x).
    """

    def __init__(self, model: Any, x: np.ndarray, y: np.ndarray) -> None:
        import copy

        import torch

        from fedsim.clients.torch_trainer import one_thread

        one_thread()  # one torch thread per worker, as for local training
        self.torch = torch
        self.model = copy.deepcopy(model).double()
        self.params = list(self.model.state_dict().keys())
        self.x = torch.from_numpy(np.asarray(x, dtype=np.float64))
        self.y = torch.from_numpy(np.asarray(y, dtype=np.int64))
        self.shapes = [tuple(p.shape) for p in self.model.state_dict().values()]
        self.num_examples = len(x)
        self.dim = int(sum(np.prod(s, dtype=np.int64) for s in self.shapes))

    def _loss(self, flat: Any, batch: np.ndarray | None) -> Any:
        from torch.func import functional_call

        torch = self.torch
        params, start = {}, 0
        for name, shape in zip(self.params, self.shapes):
            n = int(np.prod(shape, dtype=np.int64))
            params[name] = flat[start:start + n].reshape(shape)
            start += n
        xb, yb = (self.x, self.y) if batch is None else (self.x[batch], self.y[batch])
        out = functional_call(self.model, params, (xb,))
        loss = torch.nn.functional.cross_entropy(out, yb)
        reg = getattr(self.model, "regularizer", None)
        if reg is not None:
            loss = loss + reg(list(params.values()))  # e.g. lam sum x^2/(1+x^2)
        return loss

    def loss_grad(self, x: np.ndarray, batch: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        flat = self.torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
        loss = self._loss(flat, batch)
        (g,) = self.torch.autograd.grad(loss, flat)
        return float(loss.detach()), g.numpy().copy()

    def smoothness(self, x: np.ndarray) -> float:
        """``|lambda_max|`` of the Hessian at ``x`` by power iteration (Hessian-vector products)."""
        torch = self.torch
        flat = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
        (g,) = torch.autograd.grad(self._loss(flat, None), flat, create_graph=True)
        v = torch.from_numpy(np.random.default_rng(0).standard_normal(self.dim))
        v /= v.norm()
        est = 0.0
        for _ in range(POWER_ITERS):
            (hv,) = torch.autograd.grad(g, flat, grad_outputs=v, retain_graph=True)  # H v
            new = float(v @ hv)  # Rayleigh quotient v^T H v, ||v|| = 1
            norm = hv.norm()
            if float(norm) == 0.0 or abs(new - est) <= POWER_RTOL * abs(new):
                est = new
                break
            est, v = new, hv / norm
        return abs(est) if est else float(torch.finfo(torch.float64).eps)


@functools.lru_cache(maxsize=16)
def _problem(spec_json: str, client: int) -> LocalProblem:
    from fedsim.clients.trainer import _torch_model
    from fedsim.config import ClientSpec
    from fedsim.data.datasets import load_dataset, load_partition
    from fedsim.problems.logreg_torch import NonConvexLogReg

    spec = ClientSpec.from_json(spec_json)
    ds = load_dataset(spec.data, spec.seed)
    x, y = load_partition(spec.data, spec.seed, client)
    model = _torch_model(spec.model.model_dump_json(), ds.input_shape, ds.num_classes)
    if isinstance(model, NonConvexLogReg):
        return LogRegProblem.from_images(x, y, model.lam)
    return TorchProblem(model, x, y)


def local_problem(spec: Any, client: int) -> LocalProblem:
    """Client ``client``'s problem under ``spec`` (a ClientSpec); cached per process."""
    return _problem(spec.to_json(), int(client))
