"""Models: logistic regression, an MLP and a small CNN (torch).

Parameter names and layouts are part of the wire format: the numpy edge trainer
(``fedsim.clients.numpy_trainer``) uses exactly these for ``logreg`` and ``mlp``:

- ``logreg``: ``linear.weight`` (C, D), ``linear.bias`` (C,)
- ``mlp``: ``fc1.weight`` (H, D), ``fc1.bias`` (H,), ``fc2.weight`` (C, H), ``fc2.bias`` (C,)

with D = the flattened input (row-major) and logits = x @ W.T + b, as torch.nn.Linear.
No model has buffers (no batch norm): the state dict is exactly the trainable tensors.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedsim.registry import MODELS


@MODELS.register("logreg")
class LogReg(nn.Module):
    """Multinomial logistic regression."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


@MODELS.register("mlp")
class MLP(nn.Module):
    """One hidden layer with ReLU."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.fc1 = nn.Linear(math.prod(input_shape), hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@MODELS.register("cnn")
class CNN(nn.Module):
    """Two 5x5 conv layers with max-pooling, then a linear classifier (LeNet-style).

    For 28x28 inputs with the defaults: 16 and 32 channels, ~29k parameters.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, channels: tuple[int, int] = (16, 32)) -> None:
        super().__init__()
        c_in, h, w = input_shape
        c1, c2 = channels
        self.conv1 = nn.Conv2d(c_in, c1, 5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2)
        pool = (lambda s: s // 2 // 2) if min(h, w) >= 8 else (lambda s: s)
        self._pool = min(h, w) >= 8
        self.fc = nn.Linear(c2 * pool(h) * pool(w), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        if self._pool:
            x = nn.functional.max_pool2d(x, 2)
        x = torch.relu(self.conv2(x))
        if self._pool:
            x = nn.functional.max_pool2d(x, 2)
        return self.fc(x.flatten(1))


def build_model(name: str, params: dict, input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """Build a model with seeded initial weights."""
    factory = MODELS.get(name)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return factory(tuple(input_shape), num_classes, **params)
    finally:
        torch.random.set_rng_state(gen_state)

from fedsim.problems import logreg_torch  # noqa: E402,F401  (registers "logreg-ncvx", the EF21 papers' model)
