"""Sweeps: every combination of a grid of config values x seeds, one run directory each,
then one table of mean +- sd per combination and overlay plots with a band across seeds.

    fedsim sweep configs/quickstart.yaml --grid codec.name=identity,dgc,qsgd \\
        --grid strategy.name=fedavg,fedmedian --seeds 0-4 [--jobs N] [--out DIR] [--set key=value]
    fedsim sweep my_sweep.yaml        # {config: ..., grid: {key: [values]}, seeds: 0-4, set: {key: value}}

Layout: ``SWEEP_DIR/<key=value_..._seed=S>/`` is a normal run directory. A combination
whose directory holds ``summary.json`` is finished and is not run again (rerun the same
command to resume); a directory without it (an interrupted run) is cleared and rerun.
``SWEEP_DIR/summary.csv`` holds the table, ``SWEEP_DIR/*_vs_*.png`` the band plots.

A grid over a plugin's name (``codec.name=identity,qsgd``) drops the base config's
parameters of that plugin for the other names (``qsgd``'s ``levels`` mean nothing to
``identity``), unless the grid or ``--set`` gives ``codec.params`` itself.

Runs go to a pool of spawned processes (a fresh one per run for the Ray backends), ``--jobs`` at a time;
by default cores // cores a run needs (1 for ``simulation.backend: inprocess``, all of
them for the Ray backends, which spread one run over every core).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml

from fedsim.config import Config, ConfigError, _parse_value
from fedsim.metrics import SUMMARY_FILE, read_rows, write_csv

SEED_KEY = "seed"
TABLE_FILE = "summary.csv"
SPEC_FILE = "sweep.yaml"
# summary.json field -> column stem; the mean and sd of each go in the table
STATS = [("final_accuracy", "final acc"), ("best_accuracy", "best acc"), ("round_to_target", "rounds to target"),
         ("sim_time_to_target", "sim s to target"), ("total_bytes_up", "MB up")]


@dataclass(frozen=True)
class SweepSpec:
    """A base config, the grid (dotted key -> values, in order), the seeds and fixed overrides."""

    config: Path | None
    grid: dict[str, list[Any]]
    seeds: list[int]
    sets: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Combo:
    """One run of a sweep: a value for every grid key, and a seed."""

    values: tuple[tuple[str, Any], ...]
    seed: int

    @property
    def label(self) -> str:
        """``codec=dgc, strategy=fedavg`` (legends, the table)."""
        from fedsim.plots import short_key

        return ", ".join(f"{short_key(k)}={_text(v)}" for k, v in self.values) or "base"

    @property
    def name(self) -> str:
        """The run directory's name: ``codec=dgc_strategy=fedavg_seed=0`` (a hash is added where a
        value had characters a file name should not hold)."""
        from fedsim.plots import short_key

        raw = "_".join([f"{short_key(k)}={_text(v)}" for k, v in self.values] + [f"seed={self.seed}"])
        safe = re.sub(r"[^A-Za-z0-9.=_+-]", "-", raw)
        return safe if safe == raw else f"{safe}-{hashlib.sha1(raw.encode()).hexdigest()[:6]}"


def _text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"), sort_keys=True)


# --------------------------------------------------------------------------- parsing


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets and quotes: ``a,{x: 1, y: 2},[1, 2]`` -> 3 parts."""
    parts: list[str] = []
    cur: list[str] = []  # characters of the part being read
    depth, quote = 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "{[(":
            depth += 1
        elif ch in "}])":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def parse_grid(items: Iterable[str]) -> dict[str, list[Any]]:
    """``["codec.name=identity,dgc"]`` -> ``{"codec.name": ["identity", "dgc"]}`` (values as YAML)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise ConfigError(f"--grid {item!r}: expected key=value1,value2,... (e.g. codec.name=identity,dgc)")
        if key == SEED_KEY:
            raise ConfigError("--grid seed=...: give the seeds with --seeds (e.g. --seeds 0-4)")
        if key in grid:
            raise ConfigError(f"--grid {key}: given twice")
        grid[key] = [_parse_value(v) for v in split_top_level(values)]
    return grid


def parse_seeds(text: object) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,3,7"`` -> [0, 3, 7]; ``5`` -> [5]; a list as is.

    ``text`` comes from the command line or a sweep YAML (any value): anything else is a
    :class:`ConfigError`."""
    if text is None:
        return []
    if isinstance(text, int) and not isinstance(text, bool):
        return [text]
    out: list[object] = []
    if isinstance(text, str):
        try:
            for part in split_top_level(text):
                lo, dash, hi = part.partition("-")
                out += list(range(int(lo), int(hi) + 1)) if dash else [int(part)]
        except ValueError:
            raise ConfigError(f"--seeds {text!r}: expected a range 0-4, a list 0,3,7 or one seed") from None
    elif isinstance(text, Sequence):
        out = list(text)
    seeds = [s for s in out if isinstance(s, int) and not isinstance(s, bool)]
    if not seeds or len(seeds) != len(out) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {text!r}: need distinct integers")
    return seeds


def load_spec(path: str | Path, grid: Iterable[str] = (), seeds: str | None = None,
              sets: Iterable[str] = ()) -> SweepSpec:
    """A sweep from the command line: ``path`` is a config YAML (grid from ``--grid``) or a
    sweep YAML with ``config``, ``grid``, ``seeds`` and ``set`` (command-line values add to it)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{str(p)!r}: invalid YAML ({err})") from None
    cli_grid = parse_grid(grid)
    if not (isinstance(data, dict) and "grid" in data):  # a plain experiment config
        return SweepSpec(p, cli_grid, parse_seeds(seeds), list(sets))
    unknown = set(data) - {"config", "grid", "seeds", "set"}
    if unknown:
        raise ConfigError(f"sweep file {str(p)!r}: unknown key(s) {sorted(unknown)}; allowed: config, grid, seeds, set")
    file_grid = data["grid"] or {}
    if not isinstance(file_grid, dict) or not all(isinstance(v, list) and v for v in file_grid.values()):
        raise ConfigError(f"sweep file {str(p)!r}: grid must map dotted keys to non-empty lists")
    base = data.get("config")
    base_path = None if base is None else (p.parent / base if not Path(base).is_absolute() else Path(base))
    fixed = data.get("set") or {}
    file_sets = [f"{k}={json.dumps(v)}" for k, v in fixed.items()] if isinstance(fixed, dict) else list(fixed)
    return SweepSpec(base_path, {**file_grid, **cli_grid},
                     parse_seeds(seeds if seeds is not None else data.get("seeds")), file_sets + list(sets))


# --------------------------------------------------------------------------- planning


def combinations(spec: SweepSpec, base_seed: int = 0) -> list[Combo]:
    """Every combination of the grid, in grid order, each with every seed (the base seed if none)."""
    import itertools

    keys = list(spec.grid)
    seeds = spec.seeds or [base_seed]
    return [Combo(tuple(zip(keys, vals)), seed)
            for vals in itertools.product(*(spec.grid[k] for k in keys)) for seed in seeds]


def combo_overrides(spec: SweepSpec, combo: Combo, base: Config) -> list[str]:
    """The ``--set`` list of one run: fixed overrides, the grid values, the seed. A plugin
    whose name the grid changes loses the base config's parameters (see the module doc)."""
    given = set(spec.grid) | {s.partition("=")[0].strip() for s in spec.sets}
    out = list(spec.sets)
    base_data = base.model_dump(mode="json")
    for key, value in combo.values:
        section = key.removesuffix(".name")
        if key.endswith(".name") and f"{section}.params" not in given:
            node: Any = base_data
            for part in section.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and node.get("name") != value and node.get("params"):
                out.append(f"{section}.params={{}}")
        out.append(f"{key}={json.dumps(value)}")
    return out + [f"{SEED_KEY}={combo.seed}"]


def cores_per_run(cfg: Config) -> int:
    """Cores one run keeps busy: 1 in process; every core for a Ray backend (it spreads the clients)."""
    return 1 if cfg.simulation.backend == "inprocess" else (os.cpu_count() or 1)


def default_jobs(cfg: Config) -> int:
    return max(1, (os.cpu_count() or 1) // cores_per_run(cfg))


# --------------------------------------------------------------------------- running


def _run_one(config: str | None, overrides: list[str], run_dir: str) -> dict[str, Any]:
    """In a worker process: one run into ``run_dir``, its output into ``run_dir/log.txt``."""
    from fedsim.api import execute, resolve_config, start_run

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    log = os.open(os.path.join(run_dir, "log.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    cfg = resolve_config(config, overrides)
    return execute(cfg, start_run(cfg, run_dir=run_dir))


@dataclass
class Planned:
    combo: Combo
    run_dir: Path
    overrides: list[str]
    status: str = "todo"  # todo, done (finished before), ran, failed
    error: str = ""


def plan(spec: SweepSpec, out_dir: Path) -> tuple[Config, list[Planned]]:
    """Each combination's config and directory; finished ones (``summary.json`` with the same
    config) are marked ``done``; a finished run of a *different* config is an error."""
    from fedsim.api import CONFIG_COPY, config_text, resolve_config

    base = resolve_config(spec.config, spec.sets)
    planned = []
    for combo in combinations(spec, base.seed):
        overrides = combo_overrides(spec, combo, base)
        cfg = resolve_config(spec.config, overrides)  # validates every combination before any runs
        run_dir = out_dir / combo.name
        item = Planned(combo, run_dir, overrides)
        if (run_dir / SUMMARY_FILE).is_file():
            if (run_dir / CONFIG_COPY).read_text() != config_text(cfg):
                raise ConfigError(f"{run_dir} holds a finished run of another config; sweep into another --out")
            item.status = "done"
        planned.append(item)
    return base, planned


def run_sweep(spec: SweepSpec, out_dir: str | Path, jobs: int | None = None,
              report: Callable[[str], None] = print) -> list[Planned]:
    """Run every unfinished combination (``jobs`` at a time); return the plan with statuses."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base, planned = plan(spec, out_dir)
    (out_dir / SPEC_FILE).write_text(yaml.safe_dump(
        {"config": str(spec.config) if spec.config else None, "grid": spec.grid, "seeds": spec.seeds,
         "set": spec.sets}, sort_keys=False))
    todo = [p for p in planned if p.status == "todo"]
    jobs = jobs or default_jobs(base)
    report(f"sweep: {len(planned)} runs ({len(planned) - len(todo)} finished before), {len(todo)} to run, "
           f"{min(jobs, max(len(todo), 1))} at a time -> {out_dir}")
    if not todo:
        return planned
    for p in todo:
        if p.run_dir.exists():  # an interrupted run: start it again
            shutil.rmtree(p.run_dir)
    config = None if spec.config is None else str(spec.config)
    # a Ray run gets a fresh process (Ray is started once per process); in-process runs share workers
    fresh = 1 if cores_per_run(base) > 1 else None
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), max_tasks_per_child=fresh) as pool:
        running: dict[Future[Any], Planned] = {
            pool.submit(_run_one, config, p.overrides, str(p.run_dir)): p for p in todo}
        done_count = 0
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                p = running.pop(fut)
                done_count += 1
                try:
                    s = fut.result()
                    p.status = "ran"
                    report(f"[{done_count}/{len(todo)}] {p.combo.name}: final acc {s['final_accuracy']:.4f}")
                except Exception as err:  # one failed run does not stop the others
                    p.status, p.error = "failed", f"{type(err).__name__}: {err}"
                    report(f"[{done_count}/{len(todo)}] {p.combo.name}: FAILED "
                           f"({p.error}; see {p.run_dir / 'log.txt'})")
    return planned


# --------------------------------------------------------------------------- results


def mean_sd(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and sample sd (ddof 1) of the values that are not None, and how many there were."""
    got = [float(v) for v in values if v is not None]
    if not got:
        return None, None, 0
    return statistics.fmean(got), (statistics.stdev(got) if len(got) > 1 else None), len(got)


def aggregate(planned: Sequence[Planned], spec: SweepSpec) -> list[dict[str, Any]]:
    """One row per combination: its grid values, runs, and mean/sd of each of :data:`STATS`
    over its finished seeds (``*_n``: how many seeds have the value, e.g. reached the target)."""
    groups: dict[tuple[tuple[str, Any], ...], list[Planned]] = {}
    for p in planned:
        groups.setdefault(p.combo.values, []).append(p)
    rows = []
    for values, items in groups.items():
        summaries = [json.loads((p.run_dir / SUMMARY_FILE).read_text()) for p in items
                     if (p.run_dir / SUMMARY_FILE).is_file()]
        row: dict[str, Any] = {k: _text(v) for k, v in values}
        row["runs"] = len(summaries)
        row["seeds"] = " ".join(str(p.combo.seed) for p in items if (p.run_dir / SUMMARY_FILE).is_file())
        for key, _ in STATS:
            m, s, n = mean_sd(x.get(key) for x in summaries)
            row[f"{key}_mean"], row[f"{key}_sd"], row[f"{key}_n"] = m, s, n
        rows.append(row)
    return rows


def band_groups(planned: Sequence[Planned]) -> list[tuple[str, list[list[dict[str, Any]]]]]:
    """(label, metrics rows of each finished seed) per combination, for :func:`fedsim.plots.plot_bands`."""
    groups: dict[str, list[list[dict[str, Any]]]] = {}
    for p in planned:
        if (p.run_dir / SUMMARY_FILE).is_file():
            groups.setdefault(p.combo.label, []).append(read_rows(p.run_dir))
    return list(groups.items())


def write_results(planned: Sequence[Planned], spec: SweepSpec,
                  out_dir: str | Path) -> tuple[list[dict[str, Any]], list[Path]]:
    """``summary.csv`` and the band plots in ``out_dir``; returns the table rows and the plot paths."""
    from fedsim.plots import common_title, plot_bands

    out_dir = Path(out_dir)
    rows = aggregate(planned, spec)
    write_csv(out_dir / TABLE_FILE, rows)
    groups = band_groups(planned)
    configs = [yaml.safe_load((p.run_dir / "config.yaml").read_text()) for p in planned
               if (p.run_dir / SUMMARY_FILE).is_file()]
    seeds = sorted({p.combo.seed for p in planned})
    title = f"{common_title(configs)}; mean $\\pm$ sd over {len(seeds)} seed{'s' if len(seeds) > 1 else ''}"
    paths = plot_bands(groups, out_dir, title=title) if groups else []
    return rows, paths


def format_cell(row: Mapping[str, Any], key: str) -> str:
    """``0.9312 +- 0.0041`` (``k/n`` appended where some seeds lack the value, e.g. never reached the target)."""
    m, s, n = row[f"{key}_mean"], row[f"{key}_sd"], row[f"{key}_n"]
    if m is None:
        return "-"
    digits_of = {"total_bytes_up": 3, "round_to_target": 1, "sim_time_to_target": 2}
    scale, digits = (1e6 if key == "total_bytes_up" else 1.0), digits_of.get(key, 4)
    text = f"{m / scale:.{digits}f}" + ("" if s is None else f" ± {s / scale:.{digits}f}")
    return text + (f" ({n}/{row['runs']})" if n < row["runs"] else "")
