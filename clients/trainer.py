"""Local training dispatch: torch where it is installed, numpy on edge devices."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedsim.config import ClientSpec
from fedsim.data.datasets import load_dataset, load_partition


@functools.lru_cache(maxsize=2)
def _torch_model(model_json: str, input_shape: tuple[int, ...], num_classes: int) -> Any:
    from fedsim.config import ModelConfig
    from fedsim.models import build_model

    mc = ModelConfig.model_validate_json(model_json)
    return build_model(mc.name, mc.params, input_shape, num_classes, seed=0)


def local_train(
    spec: ClientSpec,
    names: Sequence[str],
    start: Sequence[np.ndarray],
    client: int,
    seed: Sequence[int],
    attack: Any = None,
) -> tuple[list[np.ndarray], dict[str, float]]:
    """Train from ``start`` on this client's partition; return new weights and metrics."""
    ds = load_dataset(spec.data, spec.seed)
    x, y = load_partition(spec.data, spec.seed, client)
    if attack is not None:
        y = attack.corrupt_labels(y, ds.num_classes)
    from . import torch_trainer as tt

    tt.one_thread()
    model = _torch_model(spec.model.model_dump_json(), ds.input_shape, ds.num_classes)
    sd_names = list(model.state_dict().keys())
    if sd_names != list(names):
        raise ValueError(f"model tensors {sd_names} do not match the server's {list(names)}")
    tt.set_weights(model, start)
    t = spec.train
    train_seed = int(np.random.SeedSequence(list(seed)).generate_state(1)[0])
    metrics = tt.train(model, x, y, epochs=t.local_epochs, batch_size=t.batch_size, lr=t.lr,
                       momentum=t.momentum, weight_decay=t.weight_decay, seed=train_seed)
    return tt.get_weights(model), metrics
