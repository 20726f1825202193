"""The ``fedsim`` command line.

``fedsim run CONFIG [--set key=value ...]``   run an experiment (Flower simulation on Ray)
``fedsim run --resume RUN_DIR``               continue a killed run from its last checkpoint
``fedsim compare RUN_DIR RUN_DIR ...``        overlay runs in one plot and print a table
``fedsim plugins``                            list the registered plugins
``fedsim deploy ...``                         real devices over gRPC (:mod:`fedsim.deploy.cli`)

A config error, an unknown plugin, a missing or corrupt file exits with status 2 and one
line (checked before the run starts: data loaded, model sized); a run that fails later
exits with status 1, one line, and its traceback in ``RUN_DIR/error.log``.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from rich.console import Console
from rich.table import Table

from fedsim.checkpoint import CheckpointError
from fedsim.config import ConfigError, check_plugins, load_config
from fedsim.preflight import check_resources
from fedsim.deploy.cli import app as deploy_app
from fedsim.metrics import make_run_dir, read_rows, summarize
from fedsim.registry import PluginError
from fedsim.runstatus import run_status, unfinished_note

app = typer.Typer(add_completion=False, no_args_is_help=True, help="fedsim: federated learning on Flower, simulated and deployed.")
app.add_typer(deploy_app, name="deploy")
console = Console(stderr=False)
if not console.is_terminal:  # logs and CI: room for the summary table
    console = Console(stderr=False, width=140)
err_console = Console(stderr=True)

MB = 1e6


def fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _fmt(v: Any, digits: int = 4) -> str:
    return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def summary_table(title: str, rows: list[tuple[str, dict[str, Any]]]) -> Table:
    t = Table(title=title)
    for col in ("run", "rounds", "final acc", "best acc", "uplink MB", "downlink MB", "rejected", "wall s"):
        t.add_column(col, justify="right" if col != "run" else "left")
    target = any("round_to_target" in s for _, s in rows)
    if target:
        t.add_column("round to target", justify="right")
    for name, s in rows:
        cells = [name, str(s["rounds"]), _fmt(s["final_accuracy"]), _fmt(s["best_accuracy"]),
                 f"{s['total_bytes_up'] / MB:.3f}", f"{s['total_bytes_down'] / MB:.3f}",
                 str(s["rejected"]), f"{s['wall_time']:.1f}"]
        if target:
            cells.append(_fmt(s.get("round_to_target")))
        t.add_row(*cells)
    return t


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

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()


@app.command()
def run(
    config: Optional[Path] = typer.Argument(None, help="experiment YAML (see configs/)"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override a field: key.sub=value (repeatable)"),
    out: Optional[Path] = typer.Option(None, help="parent directory of the run directory (default: output.dir)"),
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="RUN_DIR",
                                          help="continue an unfinished run from its last checkpoint"),
) -> None:
    """Run an experiment on Flower's simulation engine and write metrics and plots."""
    if (config is None) == (resume is None):
        fail("give an experiment config, or --resume RUN_DIR (not both)")
    if resume is not None and (set_ or out):
        fail("--resume continues a run with the config it was started with: --set and --out do not apply")
    try:
        cfg = load_config(resume / "config.yaml" if resume is not None else config, set_ or [])
        check_plugins(cfg)
        check_resources(cfg)
    except (ConfigError, PluginError) as err:
        fail(str(err))
    if resume is not None:
        run_dir = resume_dir(resume, cfg.rounds)
    else:
        try:
            run_dir = make_run_dir(out or cfg.output.dir, cfg.name)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        except OSError as err:
            fail(f"output directory {str(out or cfg.output.dir)!r}: cannot create the run directory "
                 f"({err.strerror or err})")
    console.print(f"[bold]fedsim[/] {cfg.name}: {cfg.data.num_clients} clients ({cfg.data.name}, "
                  f"{cfg.data.partition.kind}), {cfg.clients_per_round} per round, {cfg.rounds} rounds, "
                  f"strategy {cfg.strategy.name}, codec {cfg.codec.name} -> {run_dir}", highlight=False)
    from fedsim.engine.simulation import simulate

    try:
        with RoundProgress(cfg.rounds, cfg.output.progress) as progress:
            summary = simulate(cfg, run_dir, progress)
    except (ConfigError, PluginError, FileNotFoundError, CheckpointError) as err:
        fail(str(err))
    except Exception as err:  # noqa: BLE001 - one line here, the traceback in the run directory
        (run_dir / "error.log").write_text(traceback.format_exc())
        err_console.print(f"[bold red]error:[/] the run failed: {type(err).__name__}: {' '.join(str(err).split())}"
                          f" (traceback in {run_dir / 'error.log'})", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    rows = read_rows(run_dir)
    if cfg.output.plots:
        from fedsim.plots import plot_runs

        plot_runs([("", rows)], run_dir)
    console.print(summary_table(f"fedsim run {cfg.name}", [(run_dir.name, summary)]))
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
    """Overlay runs in one plot and print a table."""
    loaded = []
    for r in runs:
        try:
            loaded.append((r.name, read_rows(r)))
        except FileNotFoundError as err:
            fail(str(err))
        note = unfinished_note(r.name, run_status(r))
        if note:
            err_console.print(f"[yellow]warning:[/] {note}", highlight=False, soft_wrap=True)
    from fedsim.plots import plot_runs

    out.mkdir(parents=True, exist_ok=True)
    paths = plot_runs(loaded, out, prefix="compare_")
    console.print(summary_table("fedsim compare", [(n, summarize(rows)) for n, rows in loaded]))
    console.print("plots: " + ", ".join(str(p) for p in paths), highlight=False)


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
