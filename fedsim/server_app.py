"""The ServerApp for ``flwr run .`` (the repository is a Flower App).

It reads the experiment from the run config: ``config`` (a YAML path, relative to the
app directory) and ``overrides`` (space-separated ``key=value``), and writes its run
directory under the config's ``output.dir``.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsim.config import check_plugins, load_config
from fedsim.engine.server import run_server
from fedsim.metrics import make_run_dir

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    path = Path(str(context.run_config.get("config", "configs/quickstart.yaml")))
    if not path.is_absolute() and not path.exists():  # relative to the app (the FAB's root)
        path = Path(__file__).resolve().parent.parent / path
    overrides = shlex.split(str(context.run_config.get("overrides", "")))
    cfg = load_config(path, overrides)
    check_plugins(cfg)
    run_dir = make_run_dir(cfg.output.dir, cfg.name)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    run_server(grid, cfg, run_dir)
