"""The ``fedsim`` command line.

``fedsim run [CONFIG] [--set key=value ...]`` run an experiment (default: configs/quickstart.yaml) on Ray workers
``fedsim run --resume RUN_DIR``               continue a killed run from its last checkpoint
``fedsim sweep CONFIG --grid k=a,b --seeds 0-4``  every combination x seed; mean +- sd table, band plots
``fedsim compare RUN_DIR RUN_DIR ...``        overlay runs in one plot and print a table
``fedsim plugins``                            list the registered plugins
``fedsim deploy ...``                         real devices over gRPC (:mod:`fedsim.deploy.cli`)

A config error, an unknown plugin, a missing or corrupt file exits with status 2 and one
line (checked before the run starts: data loaded, model sized); so does a command that
needs the ``sim`` extra (torch, Ray, matplotlib) on an edge install. A run that fails
later exits with status 1, one line, and its traceback in ``RUN_DIR/error.log``.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from fedsim.api import default_config_path, execute, mix_text, start_run
from fedsim.checkpoint import CheckpointError
from fedsim.config import ConfigError, check_plugins, load_config
from fedsim.deploy.cli import app as deploy_app
from fedsim.metrics import read_rows, summarize
from fedsim.preflight import check_resources
from fedsim.registry import PluginError
from fedsim.runstatus import run_status, unfinished_note

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="fedsim: federated learning on Flower, simulated and deployed.")
app.add_typer(deploy_app, name="deploy")
console = Console(stderr=False)
if not console.is_terminal:  # logs and CI: room for the summary table
    console = Console(stderr=False, width=140)
err_console = Console(stderr=True)

MB = 1e6


def fail(message: str) -> None:
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


SIM_MODULES = ("torch", "ray", "matplotlib")  # what the `sim` extra brings and simulation needs
SIM_COMMANDS = ("run", "sweep", "compare", "plugins")


def missing_sim_modules() -> list[str]:
    """The modules of the ``sim`` extra that cannot be found here (an edge install lacks them)."""
    import importlib.util

    missing = []
    for name in SIM_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


@app.callback()
def _require_sim(ctx: typer.Context) -> None:
    """Commands that simulate, plot or list the simulation plugins need ``fedsim[sim]``."""
    if ctx.invoked_subcommand in SIM_COMMANDS and not any(a in ("--help", "-h") for a in sys.argv):
        missing = missing_sim_modules()
        if missing:
            fail(f"`fedsim {ctx.invoked_subcommand}` needs the simulation extra (missing: {', '.join(missing)}): "
                 "pip install 'fedsim[sim]'")


def _fmt(v: Any, digits: int = 4) -> str:
    return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def summary_table(title: str, rows: list[tuple[str, dict[str, Any]]]) -> Table:
    t = Table(title=title)
    for col in ("run", "rounds", "final acc", "best acc", "uplink MB", "downlink MB", "rejected", "failed",
                "wall s"):
        t.add_column(col, justify="right" if col != "run" else "left")
    target = any("round_to_target" in s for _, s in rows)
    if target:
        t.add_column("round to target", justify="right")
    for name, s in rows:
        cells = [name, str(s["rounds"]), _fmt(s["final_accuracy"]), _fmt(s["best_accuracy"]),
                 f"{s['total_bytes_up'] / MB:.3f}", f"{s['total_bytes_down'] / MB:.3f}",
                 str(s["rejected"]), str(s.get("failed", 0)), f"{s['wall_time']:.1f}"]
        if target:
            cells.append(_fmt(s.get("round_to_target")))
        t.add_row(*cells)
    return t


def print_dense_equivalent(cfg: Any, run_dir: Path) -> None:
    """After a compressed run: the uplink it used against what dense float32 updates would have cost,
    and the simulated time (network model on)."""
    from fedsim.api import dense_uplink_bytes

    rows = read_rows(run_dir)
    s = summarize(rows, cfg.target_accuracy)
    dense = dense_uplink_bytes(run_dir)
    if cfg.codec.name != "identity" and dense and s["total_bytes_up"]:
        console.print(f"codec {cfg.codec.name}: {s['total_bytes_up'] / MB:.2f} MB up; the same replies as dense "
                      f"float32 updates: {dense / MB:.2f} MB ({dense / s['total_bytes_up']:.1f}x more)",
                      highlight=False)
    sim_time = rows[-1].get("sim_time")
    if sim_time is not None:
        reach = (f", {cfg.target_accuracy} accuracy at round {s['round_to_target']} ({s['sim_time_to_target']:.1f} s)"
                 if s.get("sim_time_to_target") is not None else "")
        console.print(f"simulated time on the devices' network: {sim_time:.1f} s{reach}", highlight=False)


class RoundProgress:
    """A progress bar on a terminal; one line per round otherwise (logs, CI)."""

    def __init__(self, rounds: int, enabled: bool) -> None:
        self.rounds = rounds
        self.enabled = enabled
        self.live = enabled and console.is_terminal
        self._progress: Any = None

    def __enter__(self) -> RoundProgress:
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("round"), MofNCompleteColumn(), BarColumn(),
                                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console)
            self._progress.start()
            self._task = self._progress.add_task("rounds", total=self.rounds, info="starting the clients ...")
        return self

    def __call__(self, row: dict[str, Any]) -> None:
        info = (f"acc {_fmt(row.get('test_accuracy'))}  loss {_fmt(row.get('train_loss'))}  "
                f"up {row['cum_bytes_up'] / MB:.2f} MB  rejected {row.get('rejected', 0)}")
        if self.live:
            self._progress.update(self._task, completed=row["round"], info=info)
        elif self.enabled:
            console.print(f"round {row['round']}/{self.rounds}  {info}", highlight=False)

    def status(self, line: str) -> None:
        """A start-up line ("workers 2/2 ready, 100,000 clients")."""
        if self.live:
            self._progress.update(self._task, info=line)
        else:
            console.print(line, highlight=False)

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()


@app.command()
def run(
    config: Path | None = typer.Argument(None, help="experiment YAML (see configs/; default: configs/quickstart.yaml)"),
    set_: list[str] | None = typer.Option(None, "--set", help="override a field: key.sub=value (repeatable)"),
    out: Path | None = typer.Option(None, help="parent directory of the run directory (default: output.dir)"),
    resume: Path | None = typer.Option(None, "--resume", metavar="RUN_DIR",
                                          help="continue an unfinished run from its last checkpoint"),
) -> None:
    """Run an experiment in simulation (default: a pool of Ray workers) and write metrics and plots."""
    if config is not None and resume is not None:
        fail("give an experiment config or --resume RUN_DIR, not both")
    if resume is not None and (set_ or out):
        fail("--resume continues a run with the config it was started with: --set and --out do not apply")
    try:
        cfg = load_config(resume / "config.yaml" if resume is not None else (config or default_config_path()),
                          set_ or [])
        check_plugins(cfg)
        check_resources(cfg)
    except (ConfigError, PluginError) as err:
        fail(str(err))
    if resume is not None:
        run_dir = resume_dir(resume, cfg.rounds)
    else:
        try:
            run_dir = start_run(cfg, out)
        except OSError as err:
            fail(f"output directory {str(out or cfg.output.dir)!r}: cannot create the run directory "
                 f"({err.strerror or err})")
    console.print(f"[bold]fedsim[/] {cfg.name}: {cfg.data.num_clients} clients ({cfg.data.name}, "
                  f"{cfg.data.partition.kind}), {cfg.clients_per_round} per round, {cfg.rounds} rounds, "
                  f"strategy {cfg.strategy.name}, codec {cfg.codec.name}"
                  f"{', network ' + mix_text(cfg) if cfg.network else ''} -> {run_dir}",
                  highlight=False)
    from fedsim.engine.failure import RunFailed
    from fedsim.engine.pool import PoolSetupError

    try:
        with RoundProgress(cfg.rounds, cfg.output.progress) as progress:
            summary = execute(cfg, run_dir, progress, say=progress.status)
    except (ConfigError, PluginError, FileNotFoundError, PoolSetupError, RunFailed, CheckpointError) as err:
        fail(str(err))
    except Exception as err:  # noqa: BLE001 - one line here, the traceback in the run directory
        (run_dir / "error.log").write_text(traceback.format_exc())
        err_console.print(f"[bold red]error:[/] the run failed: {type(err).__name__}: {' '.join(str(err).split())}"
                          f" (traceback in {run_dir / 'error.log'})", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(summary_table(f"fedsim run {cfg.name}", [(run_dir.name, summary)]))
    print_dense_equivalent(cfg, run_dir)
    console.print(f"metrics, plots and config in {run_dir}", highlight=False)


def resume_dir(run_dir: Path, rounds: int) -> Path:
    """Check that ``run_dir`` can be resumed: a checkpoint, and not already finished."""
    from fedsim.checkpoint import latest

    status = run_status(run_dir)
    if status["state"] == "finished":
        fail(f"{str(run_dir)!r}: the run is finished ({status.get('round')} of {rounds} rounds); nothing to resume")
    if latest(run_dir) is None:
        fail(f"{str(run_dir)!r} holds no checkpoint (the run stopped before its first one, or checkpoint.every "
             "is 0): start it again")
    return run_dir


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="run directories"),
    out: Path = typer.Option(Path("."), help="directory for the overlay plots"),
) -> None:
    """Overlay runs in one plot (legends: what differs between their configs) and print a table."""
    from fedsim.plots import common_title, differing_labels, plot_runs

    loaded, configs = [], []
    for r in runs:
        try:
            loaded.append(read_rows(r))
        except FileNotFoundError as err:
            fail(str(err))
        copy = r / "config.yaml"
        configs.append(yaml.safe_load(copy.read_text()) if copy.is_file() else None)
        note = unfinished_note(r.name, run_status(r))
        if note:
            err_console.print(f"[yellow]warning:[/] {note}", highlight=False, soft_wrap=True)
    known = [c for c in configs if c is not None]
    labels = differing_labels(known) if len(known) == len(configs) else None
    names = labels if labels and len(set(labels)) == len(labels) else [r.name for r in runs]
    out.mkdir(parents=True, exist_ok=True)
    paths = plot_runs(list(zip(names, loaded)), out, prefix="compare_", title=common_title(known))
    table = [(n, summarize(rows, (c or {}).get("target_accuracy"))) for n, rows, c in zip(names, loaded, configs)]
    console.print(summary_table("fedsim compare", table))
    console.print("plots: " + ", ".join(str(p) for p in paths), highlight=False)


@app.command()
def sweep(
    config: Path = typer.Argument(..., help="experiment YAML, or a sweep YAML (config, grid, seeds, set)"),
    grid: list[str] | None = typer.Option(None, "--grid", help="key=value1,value2,... (repeatable)"),
    seeds: str | None = typer.Option(None, help="seeds: a range 0-4, a list 0,3,7 or one seed"),
    set_: list[str] | None = typer.Option(None, "--set", help="override for every run: key.sub=value"),
    jobs: int | None = typer.Option(None, min=1, help="runs at a time (default: cores // cores a run needs)"),
    out: Path | None = typer.Option(None, help="sweep directory (default: output.dir/sweep-CONFIG); rerun to resume"),
) -> None:
    """Run every combination of a grid x seeds (resumable), then a mean +- sd table and band plots."""
    from fedsim.sweep import STATS, format_cell, load_spec, run_sweep, write_results

    try:
        spec = load_spec(config, grid or [], seeds, set_ or [])
        base = load_config(spec.config or default_config_path(), spec.sets)
        planned = run_sweep(spec, out or Path(base.output.dir) / f"sweep-{config.stem}", jobs,
                            report=lambda line: console.print(line, highlight=False))
    except (ConfigError, PluginError) as err:
        fail(str(err))
    sweep_dir = planned[0].run_dir.parent
    rows, paths = write_results(planned, spec, sweep_dir)
    t = Table(title=f"fedsim sweep {config.name}: mean ± sd over seeds")
    for key in spec.grid:
        t.add_column(key)
    t.add_column("runs", justify="right")
    for _, title in STATS:
        t.add_column(title, justify="right")
    for row in rows:
        t.add_row(*[str(row[k]) for k in spec.grid], str(row["runs"]), *[format_cell(row, k) for k, _ in STATS])
    console.print(t)
    console.print(f"table: {sweep_dir / 'summary.csv'}; plots: {', '.join(p.name for p in paths)}", highlight=False)
    failed = [p for p in planned if p.status == "failed"]
    if failed:
        fail(f"{len(failed)} run(s) failed: " + "; ".join(f"{p.combo.name}: {p.error}" for p in failed))


@app.command()
def plugins() -> None:
    """List registered plugins of every kind."""
    from fedsim import registry

    for reg in (registry.STRATEGIES, registry.CODECS, registry.ATTACKS, registry.DATASETS, registry.MODELS):
        console.print(f"[bold]{reg.kind}[/] ({reg.group}): {', '.join(reg.names())}", highlight=False)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
