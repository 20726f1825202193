"""Server strategies, installed as ``fedsim.strategies``.

Flower's own message-API strategies are registered under their lower-case names with
fedsim's sampling defaults (fedsim samples the clients itself, seeded, and evaluates
on the server; the inner strategy takes every node it is shown and skips federated
evaluation unless told otherwise). ``fedprox`` sends ``proximal-mu`` and fedsim's
trainers (torch and numpy) add the proximal term; ``qfedavg`` reads the clients'
``train-loss`` (the mean loss over local training, standing in for the paper's
loss of the received model). Flower's differential-privacy wrappers are in
:mod:`fedsim.strategies.privacy`. fedsim's own strategies live in sibling modules,
one algorithm each.
"""

from __future__ import annotations

import inspect
from typing import Any

from flwr.serverapp import strategy as fl

from fedsim.keys import TRAIN_LOSS
from fedsim.registry import STRATEGIES

FEDSIM_DEFAULTS = {
    "fraction_train": 1.0,
    "fraction_evaluate": 0.0,
    "min_train_nodes": 1,
    "min_evaluate_nodes": 0,
    "min_available_nodes": 1,
}


def flower_strategy(cls: type, **extra_defaults: Any) -> Any:
    """A factory for a Flower strategy class with fedsim's sampling defaults (and ``extra_defaults``)."""
    accepted = inspect.signature(cls).parameters

    def factory(**params: Any) -> Any:
        defaults = {k: v for k, v in {**FEDSIM_DEFAULTS, **extra_defaults}.items() if k in accepted}
        return cls(**{**defaults, **params})

    factory.params_target = cls  # type: ignore[attr-defined]  # what user params are checked against
    factory.__doc__ = f"Flower's {cls.__name__} with fedsim's sampling defaults."
    factory.__name__ = cls.__name__
    return factory


for _name, _cls in {
    "fedavg": fl.FedAvg,
    "fedavgm": fl.FedAvgM,
    "fedadam": fl.FedAdam,
    "fedyogi": fl.FedYogi,
    "fedadagrad": fl.FedAdagrad,
    "krum": fl.Krum,
    "multikrum": fl.MultiKrum,
    "bulyan": fl.Bulyan,
    "fedmedian": fl.FedMedian,
    "fedtrimmedavg": fl.FedTrimmedAvg,
    "fedprox": fl.FedProx,
}.items():
    STRATEGIES.add(_name, flower_strategy(_cls))
STRATEGIES.add("qfedavg", flower_strategy(fl.QFedAvg, train_loss_key=TRAIN_LOSS))  # fedsim's metric name

from . import (  # noqa: E402,F401  (register "monna", "nna", "nnm", "trimmed_mean")
    ef21w,  # noqa: E402,F401  (registers "ef21w" and "ef21")
    monna,
    nested_dithering,  # noqa: E402,F401  (registers ndqsg-nested)
    nnm,
    privacy,  # noqa: E402,F401  (registers the dp-* wrappers)
    trimmed_mean,
)
