"""Models: logistic regression, an MLP, a small CNN, and the field's reference models (torch).

==============  ==========================================  =====================================
name            model                                       parameters
==============  ==========================================  =====================================
``logreg``      multinomial logistic regression             (D + 1) C: 7,850 on 28x28, 10 classes
``mlp``         one hidden layer (128)                      101,770 on 28x28, 10 classes
``cnn``         two 5x5 convs (16, 32), LeNet-style         28,938 on 28x28, 10 classes
``cnn-fedavg``  McMahan et al. 2017's CNN                   1,663,370 on 28x28x1, 10 classes
                                                            (2,156,490 on 32x32x3)
``resnet20``    ResNet-20, GroupNorm (2 groups)             269,722 on 32x32x3, 10 classes
``char-lstm``   LEAF's character LSTM (embedding 8,         819,920 (80 characters)
                2 x LSTM 256)
==============  ==========================================  =====================================

Parameter names and layouts are part of the wire format: the numpy edge trainer
(``fedsim.clients.numpy_trainer``) uses exactly these for ``logreg`` and ``mlp``:

- ``logreg``: ``linear.weight`` (C, D), ``linear.bias`` (C,)
- ``mlp``: ``fc1.weight`` (H, D), ``fc1.bias`` (H,), ``fc2.weight`` (C, H), ``fc2.bias`` (C,)

with D = the flattened input (row-major) and logits = x @ W.T + b, as torch.nn.Linear.
No model has buffers (no batch norm: ResNet-20 uses GroupNorm): the state dict is exactly
the trainable tensors, all float32, which is what the trainers send and load.
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


@MODELS.register("cnn-fedavg")
class CNNFedAvg(nn.Module):
    """The CNN of McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data", AISTATS 2017, section 3: two 5x5 convolutions of 32 and 64
    channels ('same' padding, ReLU), each followed by 2x2 max-pooling, a 512-unit dense
    layer (ReLU) and a linear output. 1,663,370 parameters on 28x28x1 with 10 classes.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        c_in, h, w = input_shape
        self.conv1 = nn.Conv2d(c_in, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(64 * (h // 4) * (w // 4), 512)
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm; the parameter-free shortcut of He et al.'s
    CIFAR ResNets (option A: stride-2 subsampling, zero-padded channels)."""

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.stride, self.pad = stride, c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        short = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
        if self.pad:
            short = nn.functional.pad(short, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return torch.relu(out + short)


@MODELS.register("resnet20")
class ResNet20(nn.Module):
    """ResNet-20 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016,
    section 4.2: 6n + 2 layers, n = 3, widths 16/32/64) with GroupNorm instead of batch
    norm, as Hsieh et al. ("The Non-IID Data Quagmire of Decentralized Machine Learning",
    ICML 2020) use it for federated training. 269,722 parameters on 32x32x3, 10 classes.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, groups: int = 2) -> None:
        super().__init__()
        c_in = input_shape[0]
        self.conv = nn.Conv2d(c_in, 16, 3, padding=1, bias=False)
        self.norm = nn.GroupNorm(groups, 16)
        blocks: list[nn.Module] = []
        width = 16
        for stage, c_out in enumerate((16, 32, 64)):
            for i in range(3):
                blocks.append(BasicBlock(width, c_out, 2 if stage and i == 0 else 1, groups))
                width = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(torch.relu(self.norm(self.conv(x))))
        return self.fc(x.mean(dim=(2, 3)))


@MODELS.register("char-lstm")
class CharLSTM(nn.Module):
    """LEAF's next-character model for Shakespeare (Caldas et al. 2018; McMahan et al.
    2017): an 8-dimensional character embedding, two LSTM layers of 256 units, and a
    linear layer over the characters from the last step. Inputs are (N, T) int64 indices;
    the vocabulary is ``num_classes`` (80). 819,920 parameters (torch's LSTM has two bias
    vectors per layer).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, embedding: int = 8,
                 hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes, embedding)
        self.lstm = nn.LSTM(embedding, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x.long()))
        return self.fc(out[:, -1])


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
