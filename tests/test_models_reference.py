"""The field's reference models: shapes, parameter counts computed by hand, one SGD step, and
weights that round-trip through the trainer's get/set_weights (no buffers)."""

import numpy as np
import pytest
import torch

from fedsim.clients import torch_trainer as tt
from fedsim.models import build_model


def conv(c_in, c_out, k, bias=True):
    return c_in * c_out * k * k + (c_out if bias else 0)


def dense(d_in, d_out):
    return d_in * d_out + d_out


def cnn_fedavg_count(c, h, w, classes):
    # conv 5x5 32, pool, conv 5x5 64, pool ('same' padding: h/4 x w/4 left), dense 512, output
    return conv(c, 32, 5) + conv(32, 64, 5) + dense(64 * (h // 4) * (w // 4), 512) + dense(512, classes)


def resnet20_count(classes):
    gn = lambda ch: 2 * ch  # noqa: E731  GroupNorm: a scale and a shift per channel
    total = conv(3, 16, 3, bias=False) + gn(16)
    c_in = 16
    for width in (16, 32, 64):
        for _ in range(3):  # two 3x3 convs + two norms a block; option-A shortcuts have no parameters
            total += conv(c_in, width, 3, bias=False) + conv(width, width, 3, bias=False) + 2 * gn(width)
            c_in = width
    return total + dense(64, classes)


def lstm_layer(d_in, hidden):
    # four gates: W_ih (4H, D), W_hh (4H, H), and torch's two biases b_ih, b_hh (4H each)
    return 4 * hidden * (d_in + hidden) + 2 * 4 * hidden


def char_lstm_count(vocab):
    return vocab * 8 + lstm_layer(8, 256) + lstm_layer(256, 256) + dense(256, vocab)


CASES = [
    ("cnn-fedavg", (1, 28, 28), 10, lambda: torch.rand(3, 1, 28, 28), cnn_fedavg_count(1, 28, 28, 10)),
    ("cnn-fedavg", (3, 32, 32), 10, lambda: torch.rand(3, 3, 32, 32), cnn_fedavg_count(3, 32, 32, 10)),
    ("resnet20", (3, 32, 32), 10, lambda: torch.rand(3, 3, 32, 32), resnet20_count(10)),
    ("char-lstm", (80,), 80, lambda: torch.randint(0, 80, (3, 20)), char_lstm_count(80)),
]


def test_hand_counts_match_the_documented_figures():
    assert cnn_fedavg_count(1, 28, 28, 10) == 1_663_370  # McMahan et al.: "1,663,370 total parameters"
    assert cnn_fedavg_count(3, 32, 32, 10) == 2_156_490
    assert resnet20_count(10) == 269_722
    assert char_lstm_count(80) == 819_920


@pytest.mark.parametrize("name, shape, classes, batch, count", CASES, ids=lambda v: str(v)[:20])
def test_shape_count_and_one_sgd_step(name, shape, classes, batch, count):
    torch.manual_seed(0)
    model = build_model(name, {}, shape, classes, seed=0)
    assert sum(p.numel() for p in model.parameters()) == count
    assert list(model.buffers()) == []  # no batch-norm statistics: state dict == parameters
    x = batch()
    y = torch.randint(0, classes, (len(x),))
    out = model(x)
    assert out.shape == (len(x), classes)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)  # small enough for a first-order decrease
    loss_fn = torch.nn.CrossEntropyLoss()
    before = loss_fn(out, y)
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss_fn(model(x), y)
    assert after < before


@pytest.mark.parametrize("name, shape, classes", [("resnet20", (3, 32, 32), 10), ("char-lstm", (80,), 80)])
def test_weights_round_trip_through_the_trainer(name, shape, classes):
    a = build_model(name, {}, shape, classes, seed=1)
    b = build_model(name, {}, shape, classes, seed=2)
    weights = tt.get_weights(a)
    assert all(w.dtype == np.float32 for w in weights)
    tt.set_weights(b, weights)
    assert all(np.array_equal(p, q) for p, q in zip(tt.get_weights(b), weights))


def test_char_lstm_trains_through_the_torch_trainer_on_int_inputs():
    model = build_model("char-lstm", {"hidden": 16, "layers": 1}, (80,), 80, seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 80, (8, 80)), rng.integers(0, 80, 8)
    m = tt.train(model, x, y, epochs=1, batch_size=4, lr=0.1, momentum=0.0, weight_decay=0.0, seed=0)
    assert m["steps"] == 2
    loss, acc = tt.evaluate(model, x, y)
    assert np.isfinite(loss) and 0 <= acc <= 1
