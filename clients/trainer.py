"""Local training dispatch: torch where it is installed, numpy on edge devices.

Two trainers produce the same update for the models both know (``logreg`` and
``mlp``: same parameter names, layout, loss and SGD rule, see
:mod:`fedsim.clients.numpy_trainer`):

- ``torch`` (:mod:`fedsim.clients.torch_trainer`): every model, needs torch (the
  ``sim`` extra, or torch on a Raspberry Pi 4/5);
- ``numpy`` (:mod:`fedsim.clients.numpy_trainer`): ``logreg`` and ``mlp`` only, needs
  numpy only (``pip install fedsim[edge]``).

Which one runs is chosen per node: the node config key ``trainer`` (``flower-supernode
--node-config 'trainer="numpy"'``, or ``fedsim deploy client --trainer numpy``), else
the environment variable ``FEDSIM_TRAINER``, else ``auto``: torch if it imports, numpy
otherwise. torch is imported only when the torch trainer is chosen, so an edge install
never touches it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedsim.config import ClientSpec
from fedsim.data.datasets import load_dataset, load_partition
from fedsim.keys import NUMPY_TRAINER

BACKENDS = ("auto", "torch", "numpy")
NUMPY_MODELS = ("logreg", "mlp")
NODE_CONFIG_KEY = "trainer"
ENV_VAR = "FEDSIM_TRAINER"


def requested_backend(node_config: Mapping[str, Any] | None = None) -> str:
    """The trainer a node asks for: node config ``trainer``, else ``$FEDSIM_TRAINER``, else auto."""
    value = (node_config or {}).get(NODE_CONFIG_KEY) or os.environ.get(ENV_VAR) or "auto"
    value = str(value).strip().lower()
    if value not in BACKENDS:
        raise ValueError(f"trainer must be one of {', '.join(BACKENDS)} (node config {NODE_CONFIG_KEY!r} "
                         f"or ${ENV_VAR}); got {value!r}")
    return value


def choose_backend(requested: str, model: str) -> str:
    """``"torch"`` or ``"numpy"`` for ``model``; imports torch only to try the torch trainer.

    Raises
    ------
    ValueError
        ``numpy`` asked for a model it does not implement.
    RuntimeError
        torch is needed (asked for, or the model is not a numpy one) but does not import.
    """
    if requested not in BACKENDS:
        raise ValueError(f"trainer must be one of {', '.join(BACKENDS)}; got {requested!r}")
    if requested == "numpy":
        if model not in NUMPY_MODELS:
            raise ValueError(f"the numpy trainer implements {', '.join(NUMPY_MODELS)}; model {model!r} needs torch")
        return "numpy"
    try:
        from . import torch_trainer  # noqa: F401  (the import is the test)
    except ImportError as err:
        if requested == "auto" and model in NUMPY_MODELS:
            return "numpy"
        why = "trainer=torch was asked for" if requested == "torch" else \
            f"model {model!r} has no numpy trainer (only {', '.join(NUMPY_MODELS)} do)"
        raise RuntimeError(f"{why}, but torch does not import here ({err}); install torch, "
                           f"or use model logreg/mlp with the numpy trainer") from None
    return "torch"


@functools.lru_cache(maxsize=2)
def _torch_model(model_json: str, input_shape: tuple[int, ...], num_classes: int) -> Any:
    from fedsim.config import ModelConfig
    from fedsim.models import build_model

    mc = ModelConfig.model_validate_json(model_json)
    return build_model(mc.name, mc.params, input_shape, num_classes, seed=0)


def _train_torch(spec: ClientSpec, names: Sequence[str], start: Sequence[np.ndarray], x: np.ndarray,
                 y: np.ndarray, input_shape: tuple[int, ...], num_classes: int,
                 train_seed: int, proximal_mu: float = 0.0) -> tuple[list[np.ndarray], dict[str, float]]:
    from . import torch_trainer as tt

    tt.one_thread()
    model = _torch_model(spec.model.model_dump_json(), input_shape, num_classes)
    sd_names = list(model.state_dict().keys())
    if sd_names != list(names):
        raise ValueError(f"model tensors {sd_names} do not match the server's {list(names)}")
    tt.set_weights(model, start)
    t = spec.train
    metrics = tt.train(model, x, y, epochs=t.local_epochs, batch_size=t.batch_size, lr=t.lr,
                       momentum=t.momentum, weight_decay=t.weight_decay, seed=train_seed, proximal_mu=proximal_mu)
    return tt.get_weights(model), metrics


def _train_numpy(spec: ClientSpec, names: Sequence[str], start: Sequence[np.ndarray], x: np.ndarray,
                 y: np.ndarray, train_seed: int, proximal_mu: float = 0.0) -> tuple[list[np.ndarray], dict[str, float]]:
    from . import numpy_trainer as nt

    params = {name: np.asarray(a, dtype=np.float32) for name, a in zip(names, start)}
    kind = nt.model_kind(params)
    if kind != spec.model.name:
        raise ValueError(f"the server sent {kind} tensors {list(names)} for model {spec.model.name!r}")
    t = spec.train
    new, metrics = nt.train(params, x, y, epochs=t.local_epochs, batch_size=t.batch_size, lr=t.lr,
                            seed=train_seed, momentum=t.momentum, weight_decay=t.weight_decay, proximal_mu=proximal_mu)
    return [new[name] for name in names], metrics


_ANNOUNCED: set[str] = set()


def _announce(chosen: str, requested: str) -> None:
    """Say once per process which trainer runs (it shows in the SuperNode's log)."""
    if chosen not in _ANNOUNCED:
        _ANNOUNCED.add(chosen)
        from logging import INFO

        from flwr.common.logger import log

        log(INFO, "fedsim: %s trainer (asked: %s)", chosen, requested)


def local_train(
    spec: ClientSpec,
    names: Sequence[str],
    start: Sequence[np.ndarray],
    client: int,
    seed: Sequence[int],
    attack: Any = None,
    backend: str = "auto",
    proximal_mu: float = 0.0,
) -> tuple[list[np.ndarray], dict[str, float]]:
    """Train from ``start`` on this client's partition; return new weights and metrics.

    ``backend`` is ``auto``, ``torch`` or ``numpy`` (see :func:`choose_backend`); the
    metrics carry ``num-examples``, ``steps``, ``train-loss`` and ``numpy-trainer``
    (1.0 when the numpy trainer ran). ``proximal_mu`` is FedProx's proximal weight (the
    strategy sends it as ``proximal-mu``; 0 = plain local SGD).
    """
    chosen = choose_backend(backend, spec.model.name)
    _announce(chosen, backend)
    ds = load_dataset(spec.data, spec.seed)
    x, y = load_partition(spec.data, spec.seed, client)
    if attack is not None:
        y = attack.corrupt_labels(y, ds.num_classes)
    train_seed = int(np.random.SeedSequence(list(seed)).generate_state(1)[0])
    if chosen == "numpy":
        new, metrics = _train_numpy(spec, names, start, x, y, train_seed, proximal_mu)
    else:
        new, metrics = _train_torch(spec, names, start, x, y, ds.input_shape, ds.num_classes, train_seed, proximal_mu)
    metrics[NUMPY_TRAINER] = 1.0 if chosen == "numpy" else 0.0
    return new, metrics
