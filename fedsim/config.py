"""Experiment configuration: typed, frozen models validated from YAML.

One YAML file per experiment (``configs/``); ``--set key=value`` overrides any field
(``--set strategy.name=fedprox --set train.lr=0.01``). Unknown keys, wrong types and
out-of-range values are :class:`ConfigError` with one line that names the key.
Plugin names (strategy, codec, model, dataset, attack) are resolved by
:func:`check_plugins`, which lists the known names when one is unknown.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedsim.network.config import NetworkConfig


class ConfigError(ValueError):
    """An invalid config; the message is one line naming the key."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PluginSpec(_Model):
    """A plugin by registered name, entry point or ``"module:attr"``, with its parameters."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class PartitionConfig(_Model):
    """How the training set is split over clients (all seeded).

    ``natural``: the dataset comes split by client (synthetic, femnist, shakespeare) and
    must be given this kind; the others must not (see :mod:`fedsim.data.datasets`).
    """

    kind: Literal["iid", "dirichlet", "shards", "natural"] = "dirichlet"
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (smaller = more label skew)")
    shards_per_client: int = Field(2, ge=1)
    min_size: int = Field(2, ge=1, description="each client gets at least this many examples (iid, dirichlet)")


class DataConfig(_Model):
    name: str = "mnist5k"
    path: str | None = Field(None, description="where the dataset's files are (IDX directory, .npz file, "
                                               "CIFAR-10 binary directory, LEAF directory)")
    num_clients: int = Field(100, ge=1)
    partition: PartitionConfig = PartitionConfig()
    test_fraction: float = Field(0.2, gt=0, lt=1, description="held-out share, for datasets without a test split")
    params: dict[str, Any] = Field(default_factory=dict, description="the dataset loader's own parameters "
                                   "(synthetic: alpha, beta, ...), checked by check_plugins")


class ModelConfig(_Model):
    name: str = "cnn"
    params: dict[str, Any] = Field(default_factory=dict)


class TrainConfig(_Model):
    """Local training on each client, each round."""

    local_epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)


class AttackConfig(_Model):
    """Byzantine or faulty clients: which attack, and which clients run it."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    count: int = Field(0, ge=0, description="number of attackers, drawn from the seed")
    clients: list[int] | None = Field(None, description="explicit attacker ids (overrides count)")


class SimulationConfig(_Model):
    backend: Literal["pool", "flower", "inprocess"] = Field(
        "pool", description="pool: virtual clients on a pool of Ray workers; flower: Flower's simulation engine "
                            "(one SuperNode per client; 'ray' is an alias); inprocess: the ClientApp called in "
                            "this process, without Ray"
    )
    workers: int | None = Field(None, ge=1, description="pool workers (default: the CPUs Ray sees / "
                                                        "num_cpus_per_client)")
    num_cpus_per_client: float = Field(1.0, gt=0, description="CPUs per pool worker (per client actor on flower)")
    num_gpus_per_worker: float = Field(0.0, ge=0, description="GPUs per pool worker, where GPUs exist")
    state_memory_mb: float = Field(
        1024.0, ge=0, description="pool: memory for clients' state (all workers together); the least recently "
                                  "used clients spill to files under the run directory")
    ray_address: str | None = Field(None, description="an existing Ray cluster ('auto' or host:port)")
    round_timeout: float = Field(600.0, gt=0, description="seconds to wait for replies in a round")
    max_payload_ratio: float = Field(
        2.0, gt=0, description="a reply larger than this times the dense update is rejected"
    )

    @model_validator(mode="before")
    @classmethod
    def _alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("backend") == "ray":  # the old name of Flower's engine
            data = {**data, "backend": "flower"}
        return data


class ValidationConfig(_Model):
    """What the server checks in every reply beyond the wire format (docs/robustness.md)."""

    max_update_norm: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="reject a decoded update whose L2 norm (all tensors) exceeds this; null: no bound")
    examples_tolerance: float = Field(
        0.0, ge=0, le=1, allow_inf_nan=False,
        description="relative tolerance of a reply's num-examples against the size known from discovery")


class FailureConfig(_Model):
    """When a run stops instead of going on (fedsim.engine.failure)."""

    max_failed_fraction: float | None = Field(
        0.5, gt=0, le=1, allow_inf_nan=False,
        description="stop when more than this fraction of the client-rounds so far failed (crashed or "
                    "never replied); null: never")
    max_consecutive_bad_rounds: int | None = Field(
        5, ge=1, description="stop after this many rounds in a row that left the model unchanged; null: never")


class OutputConfig(_Model):
    dir: str = "runs"
    plots: bool = True
    progress: bool = True
    tensorboard: bool = Field(False, description="per-round scalars as TensorBoard events in RUN_DIR/tensorboard "
                                                  "(needs the tensorboard extra)")


class Config(_Model):
    """A whole experiment."""

    name: str = "experiment"
    seed: int = 0
    rounds: int = Field(20, ge=1)
    clients_per_round: int = Field(10, ge=1)
    eval_every: int = Field(1, ge=1, description="server-side evaluation every k rounds (and the last)")
    target_accuracy: float | None = Field(None, gt=0, le=1)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    strategy: PluginSpec = PluginSpec(name="fedavg")
    codec: PluginSpec = PluginSpec(name="identity")
    attack: AttackConfig | None = None
    network: NetworkConfig | None = Field(None, description="device and network model (off: every client, instantly)")
    simulation: SimulationConfig = SimulationConfig()
    validation: ValidationConfig = ValidationConfig()
    failure: FailureConfig = FailureConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.clients_per_round > self.data.num_clients:
            raise ValueError(
                f"clients_per_round ({self.clients_per_round}) exceeds data.num_clients "
                f"({self.data.num_clients})"
            )
        if self.attack is not None:
            ids = self.attack.clients
            if ids is not None and any(not 0 <= i < self.data.num_clients for i in ids):
                raise ValueError(f"attack.clients must be in [0, {self.data.num_clients})")
            if ids is None and self.attack.count > self.data.num_clients:
                raise ValueError("attack.count exceeds data.num_clients")
        return self


class ClientSpec(_Model):
    """What a client needs to know to train a round; sent as JSON in each message."""

    seed: int
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    codec: PluginSpec

    @classmethod
    def from_config(cls, cfg: Config) -> ClientSpec:
        return cls(seed=cfg.seed, data=cfg.data, model=cfg.model, train=cfg.train, codec=cfg.codec)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> ClientSpec:
        return cls.model_validate_json(text)


# --------------------------------------------------------------------------- loading


def _fields_of(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _format_error(err: ValidationError, model: type[BaseModel] = Config) -> str:
    """One line for the first error: the dotted key, what is wrong, what is allowed."""
    e = err.errors()[0]
    loc = [str(p) for p in e["loc"]]
    key = ".".join(loc) or "(config)"
    if e["type"] == "extra_forbidden":
        # Walk the model tree to list the allowed keys at that level.
        parent: Any = model
        for part in loc[:-1]:
            fld = parent.model_fields.get(part) if isinstance(parent, type) else None
            ann = getattr(fld, "annotation", None) if fld else None
            ann = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), ann)
            if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
                parent = None
                break
            parent = ann
        allowed = ", ".join(_fields_of(parent)) if parent is not None else "?"
        return f"config key {key!r}: unknown key; allowed here: {allowed}"
    if e["type"] == "literal_error":
        return f"config key {key!r}: {e['msg']}, got {e.get('input')!r}"
    if e["type"] == "value_error" and not loc:
        return f"config: {e['msg'].removeprefix('Value error, ')}"
    return f"config key {key!r}: {e['msg']} (got {e.get('input')!r})"


def _parse_value(text: str) -> Any:
    """A ``--set`` value as YAML: ``5`` -> 5, ``true`` -> True, ``[1, 2]`` -> list."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested dict (a copy)."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value (e.g. rounds=5)")
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = _parse_value(value)
    return out


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in ``top`` wins."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_from_dict(data: Mapping[str, Any]) -> Config:
    try:
        return Config.model_validate(dict(data))
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read a YAML config (or the defaults), apply overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(p)!r}: invalid YAML ({err})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r}: expected a mapping at the top level")
        data = loaded or {}
    # Defaults, then the file, then the overrides: `--set strategy.params.x=1` keeps the name.
    merged = _merge(Config().model_dump(mode="json"), data)
    return config_from_dict(apply_overrides(merged, overrides))


def check_plugins(cfg: Config) -> None:
    """Resolve every plugin the config names; raise ConfigError listing known names."""
    from fedsim.registry import ATTACKS, CODECS, DATASETS, MODELS, STRATEGIES, PluginError, check_params

    checks = [
        ("strategy.name", STRATEGIES, cfg.strategy.name, cfg.strategy.params),
        ("codec.name", CODECS, cfg.codec.name, cfg.codec.params),
        ("model.name", MODELS, cfg.model.name, cfg.model.params),
        ("data.name", DATASETS, cfg.data.name, None),
    ]
    if cfg.attack is not None:
        checks.append(("attack.name", ATTACKS, cfg.attack.name, cfg.attack.params))
    for key, registry, name, params in checks:
        try:
            factory = registry.get(name)
            if params is not None:
                check_params(f"{registry.kind} {name!r}", getattr(factory, "params_target", factory), params)
        except PluginError as err:
            raise ConfigError(f"config key {key!r}: {err}") from None
    from fedsim.data.datasets import check_data

    check_data(cfg.data)  # data.params, and data.partition.kind against the dataset
