"""The torch trainer's SGD step equals torch.optim.SGD bit for bit."""

from __future__ import annotations

import pytest
import torch

from fedsim.clients import torch_trainer as tt
from fedsim.models import build_model


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.5, 1e-3), (0.0, 5e-4)])
def test_sgd_step_matches_torch_optim_sgd_bit_for_bit(momentum, weight_decay):
    torch.manual_seed(0)
    a = build_model("cnn", {}, (1, 28, 28), 10, seed=3)
    b = build_model("cnn", {}, (1, 28, 28), 10, seed=3)
    opt = torch.optim.SGD(b.parameters(), lr=0.05, momentum=momentum, weight_decay=weight_decay)
    params = list(a.parameters())
    buffers: list[torch.Tensor | None] = [None] * len(params)
    loss_fn = torch.nn.CrossEntropyLoss()
    for step in range(4):
        x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(step))
        y = torch.arange(8) % 10
        for p in params:
            p.grad = None
        loss_fn(a(x), y).backward()
        tt.sgd_step(params, buffers, 0.05, momentum, weight_decay)
        opt.zero_grad()
        loss_fn(b(x), y).backward()
        opt.step()
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.state_dict()["conv1.weight"],
                           build_model("cnn", {}, (1, 28, 28), 10, seed=3).state_dict()["conv1.weight"])
