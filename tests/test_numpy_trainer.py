"""numpy edge trainer: gradients, equality with torch, learning, and no torch import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fedsim.clients.numpy_trainer import (
    batch_order,
    evaluate,
    init_params,
    loss_and_grads,
    model_kind,
    train,
)


def _data(n, d, c, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, size=(n, d)).astype(dtype), rng.integers(0, c, size=n)


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_gradients_match_finite_differences(kind):
    x, y = _data(7, 5, 3, seed=1, dtype=np.float64)
    params = {k: v.astype(np.float64) for k, v in init_params(kind, 5, 3, seed=2, hidden=4).items()}
    _, grads = loss_and_grads(params, x, y)
    eps = 1e-6
    for k, p in params.items():
        num = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + eps
            lp, _ = loss_and_grads(params, x, y)
            p[i] = old - eps
            lm, _ = loss_and_grads(params, x, y)
            p[i] = old
            num[i] = (lp - lm) / (2 * eps)  # central difference
        np.testing.assert_allclose(grads[k], num, rtol=1e-5, atol=1e-8, err_msg=k)


def test_hand_computed_zero_model():
    # All-zero logits: p = 1/C for every class, loss = log C, grad_b = mean(1/C - onehot).
    params = {"linear.weight": np.zeros((2, 3)), "linear.bias": np.zeros(2)}
    x = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    y = np.array([0, 1])
    loss, g = loss_and_grads(params, x, y)
    assert loss == pytest.approx(np.log(2))
    np.testing.assert_allclose(g["linear.bias"], [0.0, 0.0])
    # dW = (p - Y)^T x / B = [[-.5, .5], [.5, -.5]] @ x / 2
    np.testing.assert_allclose(g["linear.weight"], [[-0.25, 0.25, -0.5], [0.25, -0.25, 0.5]])
    # Ties break to class 0 as in argmax: accuracy 1/2.
    assert evaluate(params, x, y) == (pytest.approx(np.log(2)), 0.5)


@pytest.mark.parametrize("kind, hidden", [("logreg", 128), ("mlp", 16)])
def test_same_as_torch_one_epoch(kind, hidden):
    torch = pytest.importorskip("torch", reason="the differential test needs torch (the sim extra)")
    nn = torch.nn
    n, d, c, bs, lr = 50, 12, 4, 8, 0.5
    x, y = _data(n, d, c, seed=3)
    params = init_params(kind, d, c, seed=4, hidden=hidden)

    class LogReg(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(d, c)

        def forward(self, t):
            return self.linear(torch.flatten(t, 1))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(d, hidden)
            self.fc2 = nn.Linear(hidden, c)

        def forward(self, t):
            return self.fc2(torch.relu(self.fc1(torch.flatten(t, 1))))

    model = (LogReg if kind == "logreg" else MLP)()
    # Same names, shapes and layout: load_state_dict(strict=True) accepts the numpy dict.
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in params.items()}, strict=True)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for idx in batch_order(n, bs, epochs=1, seed=5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
        opt.step()
    ours, metrics = train(params, x, y, epochs=1, batch_size=bs, lr=lr, seed=5)
    assert metrics == {"num-examples": 50.0, "steps": 7.0, "train-loss": metrics["train-loss"]}  # ceil(50/8) steps
    for k, v in model.state_dict().items():
        np.testing.assert_allclose(ours[k], v.numpy(), rtol=0, atol=1e-5, err_msg=k)
    # And the forward pass on images (N, 1, 3, 4) flattened row-major agrees too.
    imgs = x.reshape(n, 1, 3, 4)
    with torch.no_grad():
        tl = torch.nn.functional.cross_entropy(model(torch.from_numpy(imgs)), yt).item()
    assert evaluate(ours, imgs, y)[0] == pytest.approx(tl, abs=1e-5)


@pytest.mark.parametrize("kind, epochs, lr", [("logreg", 10, 0.5), ("mlp", 10, 0.2)])
def test_learns_sklearn_digits(kind, epochs, lr):
    datasets = pytest.importorskip("sklearn.datasets", reason="needs scikit-learn for the digits data")
    digits = datasets.load_digits()
    x = (digits.images / 16.0).astype(np.float32)  # (1797, 8, 8) in [0, 1]
    y = digits.target
    perm = np.random.default_rng(0).permutation(len(y))
    tr, te = perm[:1400], perm[1400:]
    params = init_params(kind, 64, 10, seed=0, hidden=64)
    loss0, acc0 = evaluate(params, x[te], y[te])
    new, metrics = train(params, x[tr], y[tr], epochs=epochs, batch_size=32, lr=lr, seed=1)
    loss1, acc1 = evaluate(new, x[te], y[te])
    assert acc0 < 0.3 and acc1 > 0.9, (acc0, acc1)
    assert loss1 < loss0 and metrics["train-loss"] < loss0


def test_train_is_pure_deterministic_and_keeps_dtype():
    x, y = _data(30, 6, 3, seed=7)
    params = init_params("mlp", 6, 3, seed=8, hidden=5)
    before = {k: v.copy() for k, v in params.items()}
    a, ma = train(params, x, y, epochs=2, batch_size=7, lr=0.1, seed=9)
    b, mb = train(params, x, y, epochs=2, batch_size=7, lr=0.1, seed=9)
    c, _ = train(params, x, y, epochs=2, batch_size=7, lr=0.1, seed=10)
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])
        np.testing.assert_array_equal(a[k], b[k])
        assert a[k].dtype == np.float32 and a[k].shape == params[k].shape
    assert ma == mb and any(not np.array_equal(a[k], c[k]) for k in a)


def test_batch_order_covers_each_epoch_once():
    batches = list(batch_order(10, 4, epochs=2, seed=0))
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    assert sorted(np.concatenate(batches[:3])) == list(range(10))
    assert sorted(np.concatenate(batches[3:])) == list(range(10))


def test_init_shapes_and_torch_bound():
    p = init_params("mlp", 784, 10, seed=0)
    assert {k: v.shape for k, v in p.items()} == {
        "fc1.weight": (128, 784), "fc1.bias": (128,), "fc2.weight": (10, 128), "fc2.bias": (10,)}
    assert np.abs(p["fc1.weight"]).max() <= 1 / np.sqrt(784)
    assert model_kind(p) == "mlp" and model_kind(init_params("logreg", 4, 2, seed=0)) == "logreg"


@pytest.mark.parametrize("call, msg", [
    (lambda p, x, y: train({"w": np.zeros(2)}, x, y, 1, 1, 0.1, 0), "unknown parameter names"),
    (lambda p, x, y: train(p, x[:, :3], y, 1, 1, 0.1, 0), "features"),
    (lambda p, x, y: train(p, x, y + 5, 1, 1, 0.1, 0), r"labels must be in \[0, 3\)"),
    (lambda p, x, y: train(p, x, y, 0, 1, 0.1, 0), "epochs >= 1"),
    (lambda p, x, y: train(p, x[:0], y[:0], 1, 1, 0.1, 0), "no training examples"),
    (lambda p, x, y: evaluate({**p, "linear.bias": np.zeros(4)}, x, y), r"linear.bias \(C,\)"),
])
def test_validation(call, msg):
    x, y = _data(5, 6, 3, seed=0)
    with pytest.raises(ValueError, match=msg):
        call(init_params("logreg", 6, 3, seed=0), x, y)


def test_no_torch_in_import_chain():
    code = ("import sys, fedsim.clients.numpy_trainer, fedsim.codecs; "
            "bad = sorted(m for m in ('torch', 'ray') if m in sys.modules); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
