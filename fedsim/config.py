"""Experiment configuration: typed, frozen models validated from YAML.

One YAML file per experiment (``configs/``); ``--set key=value`` overrides any field
(``--set strategy.name=fedprox --set train.lr=0.01``). Unknown keys, wrong types and
out-of-range values are :class:`ConfigError` with one line that names the key.
Plugin names (strategy, codec, model, dataset, attack) are resolved by
:func:`check_plugins`, which lists the known names when one is unknown.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedsim.network.config import NetworkConfig


class ConfigError(ValueError):
    """An invalid config; the message is one line naming the key."""


class _Model(BaseModel):
    # inf and NaN are refused in every float field (``train.lr: .inf`` is an error)
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


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


class CheckpointConfig(_Model):
    """What a run saves so that ``fedsim run --resume RUN_DIR`` can continue it (docs/checkpoint.md)."""

    every: int = Field(1, ge=0, description="save a checkpoint every k rounds and after the last (0: never)")
    min_interval_s: float = Field(
        30.0, ge=0, description="but not sooner than this many seconds after the previous one (the last round "
                                "always saves): saving every client's state each round would dominate short rounds")


RUN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"  # and no '..' (checked in Config)
MAX_SEED = 2**63 - 1


class Config(_Model):
    """A whole experiment."""

    name: str = Field("experiment", pattern=RUN_NAME_PATTERN,
                      description="the run directory's prefix: letters, digits, '.', '_', '-' (no '/', no '..')")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="numpy's SeedSequence takes non-negative seeds only")
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
    checkpoint: CheckpointConfig = CheckpointConfig()

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if ".." in v:
            raise ValueError("a run name may not contain '..'")
        return v

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


def _model_at(model: type[BaseModel], path: list[str]) -> type[BaseModel] | None:
    """The model a path of field names leads to, or None where it leaves the tree of models."""
    for part in path:
        fld = model.model_fields.get(part)
        ann = fld.annotation if fld is not None else None
        # a field `Sub | None` names its model among the union's arguments
        sub = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)),
                   None)
        if sub is None:
            return None
        model = sub
    return model


def _format_error(err: ValidationError, model: type[BaseModel] = Config) -> str:
    """One line for the first error: the dotted key, what is wrong, what is allowed."""
    e = err.errors()[0]
    loc = [str(p) for p in e["loc"]]
    key = ".".join(loc) or "(config)"
    if e["type"] == "extra_forbidden":
        # Walk the model tree to list the allowed keys at that level.
        parent = _model_at(model, loc[:-1])
        allowed = ", ".join(_fields_of(parent)) if parent is not None else "?"
        return f"config key {key!r}: unknown key; allowed here: {allowed}"
    if e["type"] == "literal_error":
        return f"config key {key!r}: {e['msg']}, got {e.get('input')!r}"
    if e["type"] == "value_error" and not loc:
        return f"config: {e['msg'].removeprefix('Value error, ')}"
    got = repr(e.get("input"))
    got = got if len(got) <= 80 else got[:77] + "..."
    if e["type"] == "string_pattern_mismatch" and key == "name":
        return (f"config key 'name': a run name is 1-100 letters, digits, '.', '_' or '-', starting with a "
                f"letter or digit (it names the run directory), got {got}")
    return f"config key {key!r}: {e['msg'].removeprefix('Value error, ')} (got {got})"


def _parse_value(text: str) -> Any:
    """A ``--set`` value as YAML: ``5`` -> 5, ``true`` -> True, ``[1, 2]`` -> list."""
    try:
        return parse_yaml(text)
    except (yaml.YAMLError, RecursionError):
        return text


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested dict (a copy)."""
    out = json.loads(json.dumps(data, default=str))  # YAML dates and the like: as text
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


MAX_ALIASES = 50  # YAML aliases in one document (more is refused: "billion laughs")
MAX_CONFIG_BYTES = 1 << 20  # a config file is text a person writes


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses duplicate keys and more than ``MAX_ALIASES`` aliases.

    An alias expands to the whole node it names, so a few lines of nested aliases
    ("billion laughs") become gigabytes once merged into the config: they are refused
    before anything is expanded. A key given twice in one mapping is an error (YAML says
    keys are unique; PyYAML would silently keep the last one).
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases (*name): refused")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    dup = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: SafeLoader reports it below
                    continue
                if dup:
                    raise yaml.YAMLError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    """YAML through :class:`_StrictLoader` (safe, bounded aliases, unique keys)."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file; ConfigError naming the file and what is wrong."""
    p = Path(path)
    where = f"config file {str(p)!r}"
    if not p.is_file():
        raise ConfigError(f"{where} not found")
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{where}: larger than {MAX_CONFIG_BYTES} bytes; a config is a short text")
        text = p.read_bytes().decode("utf-8")
    except OSError as err:
        raise ConfigError(f"{where}: cannot be read ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{where}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    try:
        loaded = parse_yaml(text)
    except (yaml.YAMLError, RecursionError) as err:
        detail = " ".join(str(err).split()) if not isinstance(err, RecursionError) else "nested too deeply"
        raise ConfigError(f"{where}: invalid YAML ({detail})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    return loaded or {}


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read a YAML config (or the defaults), apply overrides, validate."""
    data = read_config_file(path) if path is not None else {}
    # Defaults, then the file, then the overrides: `--set strategy.params.x=1` keeps the name.
    merged = _merge(Config().model_dump(mode="json"), data)
    return config_from_dict(apply_overrides(merged, overrides))


def _is_strategy(obj: Any) -> bool:
    from flwr.serverapp.strategy import Strategy

    methods = ("configure_train", "aggregate_train")
    return isinstance(obj, Strategy) or all(callable(getattr(obj, m, None)) for m in methods)


def _is_codec(obj: Any) -> bool:
    return all(callable(getattr(obj, m, None)) for m in ("init", "encode", "decode", "check", "fields"))


def _is_attack(obj: Any) -> bool:
    from fedsim.attacks.base import ClientAttack, ServerAttack

    return isinstance(obj, (ClientAttack, ServerAttack))


def check_plugins(cfg: Config) -> None:
    """Resolve every plugin the config names; raise ConfigError listing known names.

    The strategy, the codec and the attack are built once with their parameters, so a
    value their constructor refuses (``ValueError``/``TypeError``) is a ConfigError naming
    the ``params`` key, and a ``module:attr`` that names something else (not a Flower
    strategy, not a codec, not an attack) is refused here, before any training.
    """
    from fedsim.registry import ATTACKS, CODECS, DATASETS, MODELS, STRATEGIES, PluginError, check_params

    kinds = {"strategy.name": ("a Flower Strategy (configure_train, aggregate_train)", _is_strategy),
             "codec.name": ("a codec (init, encode, decode, check, fields)", _is_codec),
             "attack.name": ("an attack (a ClientAttack or ServerAttack)", _is_attack)}
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
        except Exception as err:  # a plugin module that fails to import
            raise ConfigError(f"config key {key!r}: {registry.kind} {name!r} cannot be loaded "
                              f"({type(err).__name__}: {err})") from None
        if key not in kinds:
            continue
        what, ok = kinds[key]
        if not callable(factory):
            raise ConfigError(f"config key {key!r}: {name!r} is a {type(factory).__name__}, not {what}")
        section = key.partition(".")[0]
        try:
            with _flower_quiet():  # a built strategy's notices are said again when the run builds it
                built = factory(**(params or {}))
        except (ValueError, TypeError, ArithmeticError) as err:
            raise ConfigError(f"config key {section + '.params'!r}: {registry.kind} {name!r} refused its "
                              f"parameters: {one_line(err)}") from None
        if not ok(built):
            raise ConfigError(f"config key {key!r}: {name!r} gives a {type(built).__name__}, not {what}")

    from fedsim.data.datasets import check_data

    check_data(cfg.data)  # data.params, and data.partition.kind against the dataset


@contextlib.contextmanager
def _flower_quiet() -> Iterator[None]:
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (whitespace collapsed), at most ``limit`` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit] + " ..."

