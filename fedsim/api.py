"""The Python API: run an experiment from a notebook or a script.

    import fedsim
    res = fedsim.run("configs/quickstart.yaml", rounds=5, train__lr=0.1, codec={"name": "fp16"})
    res.summary["final_accuracy"], res.rounds[-1]["cum_bytes_up"], res.run_dir
    df = res.to_dataframe()        # if pandas is installed

``fedsim.run`` writes the same run directory as ``fedsim run`` (``config.yaml``, the
metrics files, ``summary.json``, plots, TensorBoard events when ``output.tensorboard``)
and returns a :class:`Result`. Overrides are keyword arguments with ``__`` for the dots
of ``--set`` (``train__lr=0.1`` is ``--set train.lr=0.1``) or one mapping with dotted keys
(``{"train.lr": 0.1}``); a value replaces the field as ``--set`` does (a mapping replaces a
whole section such as ``codec``).

Nothing here imports torch or Ray until a run starts, so ``import fedsim`` stays
light on an edge install.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedsim.config import Config, ConfigError, _merge, apply_overrides, check_plugins, config_from_dict, load_config
from fedsim.metrics import CLIENTS_FILE, SUMMARY_FILE, make_run_dir, read_rows

DEFAULT_CONFIG = "quickstart.yaml"
CONFIG_COPY = "config.yaml"
Progress = Callable[[dict[str, Any]], None]


def default_config_path() -> Path:
    """The default experiment: ``configs/quickstart.yaml`` of a source checkout, else the copy
    installed with the package (``fedsim.configs``), so ``fedsim run`` works from any directory."""
    checkout = Path(__file__).resolve().parent.parent / "configs" / DEFAULT_CONFIG
    if checkout.is_file():
        return checkout
    from importlib.resources import files

    try:
        installed = Path(str(files("fedsim.configs") / DEFAULT_CONFIG))
    except ModuleNotFoundError:
        installed = checkout
    if not installed.is_file():
        raise ConfigError(f"the default config {DEFAULT_CONFIG} is not installed; name a config file")
    return installed


def override_list(overrides: Mapping[str, Any] | None = None, **kw: Any) -> list[str]:
    """``{"train.lr": 0.1}`` and ``train__lr=0.1`` as ``--set`` strings (values as JSON, which YAML reads back)."""
    items = {**dict(overrides or {}), **{k.replace("__", "."): v for k, v in kw.items()}}
    return [f"{key}={json.dumps(value)}" for key, value in items.items()]


def resolve_config(config: Config | Mapping[str, Any] | str | Path | None = None,
                   overrides: Iterable[str] = ()) -> Config:
    """A validated :class:`Config` from a path (``None``: the default), a mapping or a Config,
    with ``--set``-style overrides applied. Plugin names are checked too."""
    if config is None or isinstance(config, (str, Path)):
        cfg = load_config(default_config_path() if config is None else config, overrides)
    else:
        data = config.model_dump(mode="json") if isinstance(config, Config) else dict(config)
        cfg = config_from_dict(apply_overrides(_merge(Config().model_dump(mode="json"), data), overrides))
    check_plugins(cfg)
    return cfg


def start_run(cfg: Config, out: str | Path | None = None, run_dir: str | Path | None = None) -> Path:
    """Make the run directory (``out/name-timestamp``, or exactly ``run_dir``) and write the config copy."""
    if run_dir is None:
        path = make_run_dir(out or cfg.output.dir, cfg.name)
    else:
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_COPY).write_text(config_text(cfg))
    return path


def config_text(cfg: Config) -> str:
    """The YAML of the config copy a run directory holds."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def dense_uplink_bytes(run_dir: str | Path) -> int:
    """What the replies that reached the server would have cost uncompressed: for every client
    row of ``clients.jsonl`` with uplink bytes, the dense float32 model it was sent
    (``bytes_down``). Compare with ``summary["total_bytes_up"]`` to see what a codec saved."""
    total = 0
    path = Path(run_dir) / CLIENTS_FILE
    for line in path.read_text().splitlines() if path.is_file() else []:
        if line.strip():
            c = json.loads(line)
            if c.get("bytes_up", 0) > 0:
                total += int(c.get("bytes_down", 0))
    return total


def mix_text(cfg: Config) -> str:
    """The device mix of the network model: ``4g-phone 60%, wifi-phone 30%, rpi-wifi 10%``."""
    return "" if cfg.network is None else ", ".join(f"{k} {v:.0%}" for k, v in cfg.network.mix.items())


def describe(cfg: Config) -> str:
    """What ran, for plot titles: dataset, strategy + codec (with their parameters), and on a
    second line the device mix when a network model is on."""
    def plugin(spec: Any) -> str:
        params = " ".join(f"{k}={v}" for k, v in spec.params.items() if not isinstance(v, (dict, list)))
        return f"{spec.name} ({params})" if params else spec.name

    net = "" if cfg.network is None else "\nnetwork: " + mix_text(cfg)
    return f"{cfg.data.name}, {cfg.model.name}: {plugin(cfg.strategy)} + {plugin(cfg.codec)}{net}"


def execute(cfg: Config, run_dir: Path, progress: Progress | None = None,
            say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``cfg`` into ``run_dir`` (metrics, summary, TensorBoard events, plots); return the summary.

    ``say`` receives start-up lines ("workers 2/2 ready, 100,000 clients")."""
    from fedsim.engine.simulation import simulate

    callbacks: list[Progress] = [progress] if progress is not None else []
    writer = None
    if cfg.output.tensorboard:
        from fedsim.tensorboard_log import ScalarWriter

        writer = ScalarWriter(run_dir)
        callbacks.append(writer.round)
    def each(row: dict[str, Any]) -> None:
        for cb in callbacks:
            cb(row)

    try:
        summary = simulate(cfg, run_dir, each if callbacks else None, say=say)
        if writer is not None:
            writer.backfill(read_rows(run_dir))
    finally:
        if writer is not None:
            writer.close()
    if cfg.output.plots:
        from fedsim.plots import plot_run

        plot_run(read_rows(run_dir), run_dir, describe(cfg))
    return summary


@dataclass(frozen=True)
class Result:
    """What :func:`run` returns.

    Attributes
    ----------
    summary : dict
        ``summary.json``: final and best accuracy, byte totals, rounds and simulated
        seconds to ``target_accuracy``.
    rounds : list of dict
        ``metrics.jsonl``: one row per round (round 0 is the initial model).
    run_dir : Path
        The run directory, as ``fedsim run`` writes it.
    config : Config
        The validated config that ran.
    """

    summary: dict[str, Any]
    rounds: list[dict[str, Any]]
    run_dir: Path
    config: Config

    def column(self, key: str) -> list[Any]:
        """One metric over the rounds (``None`` where a round lacks it)."""
        return [r.get(key) for r in self.rounds]

    def to_dataframe(self) -> Any:
        """The per-round metrics as a pandas DataFrame (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Result.to_dataframe needs pandas (pip install pandas); "
                              "Result.rounds holds the same rows as a list of dicts") from None
        return pd.DataFrame(self.rounds)


def load_result(run_dir: str | Path) -> Result:
    """A finished run directory as a :class:`Result` (its config copy, metrics and summary)."""
    path = Path(run_dir)
    cfg = load_config(path / CONFIG_COPY)
    return Result(json.loads((path / SUMMARY_FILE).read_text()), read_rows(path), path, cfg)


def run(config: Config | Mapping[str, Any] | str | Path | None = None, overrides: Mapping[str, Any] | None = None,
        /, *, out: str | Path | None = None, run_dir: str | Path | None = None,
        progress: Progress | None = None, **kw: Any) -> Result:
    """Run one experiment and return its :class:`Result`.

    Parameters
    ----------
    config
        A YAML path, a mapping (the YAML's content), a :class:`Config`, or ``None`` for the
        default experiment (``configs/quickstart.yaml``).
    overrides
        Dotted keys to values, as ``--set`` takes them: ``{"train.lr": 0.1}``.
    out
        Parent of the run directory (default: ``output.dir``); ``run_dir`` names it exactly.
    progress
        Called with each round's metrics row as it is written.
    **kw
        More overrides, ``__`` for dots: ``train__lr=0.1``, ``codec={"name": "fp16"}``.
    """
    cfg = resolve_config(config, override_list(overrides, **kw))
    path = start_run(cfg, out, run_dir)
    summary = execute(cfg, path, progress)
    return Result(summary, read_rows(path), path, cfg)
