"""The EF21 papers' problem as a fedsim model: ``logreg-ncvx``.

Binary logistic regression with the non-convex regulariser of
:mod:`fedsim.problems.logreg` (EF21, NeurIPS 2021; Error Feedback Reloaded, ICLR 2024)::

    f_i(x) = (1/m_i) sum_j log(1 + exp(-b_j a_j^T x)) + lam sum_k x_k^2 / (1 + x_k^2)

with ``x = [weight (D,), bias]`` (d = D + 1: the bias is the papers' constant feature,
and the regulariser covers it too) and ``b_j = +1`` for class 1, ``-1`` for class 0.

The module outputs the two logits ``(0, a^T x)``, so that fedsim's cross-entropy on
classes {0, 1} *is* the logistic loss ``log(1 + exp(-b a^T x))`` and the server's
test loss and accuracy mean what they should. :meth:`NonConvexLogReg.regularizer`
adds the non-convex term; the EF21 client task (``fedsim.clients.ef21``) recognises
this model and computes gradients and the exact ``L_i`` with the numpy functions of
:mod:`fedsim.problems.logreg`. The weights start at zero (the papers' ``x^0 = 0``)
unless ``init: "torch"``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from fedsim.registry import MODELS

from .logreg import LAMBDA


@MODELS.register("logreg-ncvx")
class NonConvexLogReg(nn.Module):
    """Binary logistic regression with the regulariser ``lam sum x^2/(1+x^2)``.

    Parameters
    ----------
    input_shape : tuple of int
    num_classes : int
        Must be 2 (a binary dataset such as ``mnist5k-binary``).
    lam : float
        Regularisation weight (the papers use 0.1).
    init : {"zeros", "torch"}
        ``x^0 = 0`` (the papers') or torch's default Linear initialisation.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, lam: float = LAMBDA,
                 init: str = "zeros") -> None:
        super().__init__()
        if num_classes != 2:
            raise ValueError(f"logreg-ncvx is binary: it needs a 2-class dataset (e.g. mnist5k-binary); "
                             f"got {num_classes} classes")
        if not (lam >= 0 and math.isfinite(lam)):
            raise ValueError(f"lam must be finite and >= 0; got {lam}")
        if init not in ("zeros", "torch"):
            raise ValueError(f"init must be 'zeros' or 'torch'; got {init!r}")
        self.lam = float(lam)
        self.linear = nn.Linear(math.prod(input_shape), 1)
        if init == "zeros":
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x.flatten(1))  # a^T x (with the bias as the constant feature)
        return torch.cat([torch.zeros_like(z), z], dim=1)  # CE on (0, z) = log(1 + exp(-b z))

    def regularizer(self, tensors: Iterable[torch.Tensor] | None = None) -> torch.Tensor:
        """``lam sum_k x_k^2 / (1 + x_k^2)`` over every coordinate, bias included.

        ``tensors`` replaces the module's own parameters (for functional gradients).
        """
        ps = list(self.parameters()) if tensors is None else list(tensors)
        # as_tensor: sum() is the tensor itself here, but the int 0 for no tensors at all
        return self.lam * torch.as_tensor(sum(((p * p) / (1 + p * p)).sum() for p in ps))
