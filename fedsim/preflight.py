"""Checks before a run starts: the data loaded and partitioned, the model sized.

:func:`check_resources` runs after :func:`fedsim.config.check_plugins` in ``fedsim run``
and ``fedsim deploy server``: a corrupt data file, more clients than examples, a split that
cannot be drawn, a bad trace file or a model too large to hold is a
:class:`~fedsim.config.ConfigError` naming the key, before any process or thread starts
(docs/input-limits.md).
"""

from __future__ import annotations

from fedsim.config import Config, ConfigError, one_line

MAX_MODEL_PARAMETERS = 100_000_000
"""The largest model ``fedsim run`` builds (100 M parameters, 400 MB as float32): every
sampled client's update and the server's copies are model-sized, so a config past this
is refused before anything is allocated."""


def check_resources(cfg: Config) -> None:
    """Load the data, partition it and size the model before a run starts.

    Raises ConfigError (one line, naming the key) for an unreadable or corrupt data file,
    more clients than the training set can give ``partition.min_size`` examples each,
    a partition that cannot be drawn, a network model that cannot be built (a bad trace
    file), or a model of more than
    :data:`MAX_MODEL_PARAMETERS` parameters (counted on torch's ``meta`` device, which
    allocates nothing).
    """
    from fedsim.data.datasets import client_indices, load_dataset

    key = "data.path" if cfg.data.path else "data.name"
    try:
        ds = load_dataset(cfg.data, cfg.seed)
    except ConfigError:
        raise
    except (ValueError, OSError, EOFError, MemoryError) as err:  # DataError, FileNotFoundError, ...
        raise ConfigError(f"config key {key!r}: {one_line(err)}") from None
    if not getattr(ds, "natural", False):  # a dataset split by client checks its own split when loaded
        n_train, need = len(ds.y_train), cfg.data.num_clients * max(cfg.data.partition.min_size, 1)
        if need > n_train:
            raise ConfigError(
                f"config key 'data.num_clients': {cfg.data.num_clients} clients need at least {need} training "
                f"examples (data.partition.min_size={cfg.data.partition.min_size} each); {cfg.data.name!r} has "
                f"{n_train}")
        try:
            client_indices(cfg.data, cfg.seed)
        except ValueError as err:
            raise ConfigError(f"config key 'data.partition': {one_line(err)}") from None
    if cfg.network is not None:  # device draws and trace files, as the server will build them
        from fedsim.network import NetworkModel

        try:
            NetworkModel(cfg.network, cfg.seed, cfg.data.num_clients)
        except (ValueError, OSError) as err:  # TraceError, a trace file that is not UTF-8, ...
            raise ConfigError(f"config key 'network': {one_line(err)}") from None
    n_params = count_parameters(cfg, ds.input_shape, ds.num_classes)
    if n_params > MAX_MODEL_PARAMETERS:
        raise ConfigError(f"config key 'model.params': model {cfg.model.name!r} has {n_params:,} parameters, "
                          f"more than fedsim's limit of {MAX_MODEL_PARAMETERS:,}")


def count_parameters(cfg: Config, input_shape: tuple[int, ...], num_classes: int) -> int:
    """Parameters of the config's model, built on torch's ``meta`` device (no memory)."""
    import torch

    from fedsim.models import build_model

    try:
        with torch.device("meta"):
            model = build_model(cfg.model.name, cfg.model.params, input_shape, num_classes, cfg.seed)
    except (ValueError, TypeError, RuntimeError, ArithmeticError) as err:
        raise ConfigError(f"config key 'model.params': model {cfg.model.name!r} cannot be built for inputs "
                          f"{tuple(input_shape)} and {num_classes} classes: {one_line(err)}") from None
    return int(sum(p.numel() for p in model.parameters()))
