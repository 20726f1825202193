"""Run an experiment in simulation, on the backend the config names.

The ServerApp body (:func:`fedsim.engine.server.run_server`) and the ClientApp
(``fedsim.clients.app:app``) are the ones a real deployment runs; only the transport
differs:

- ``pool`` (default): virtual clients on a few long-lived Ray workers
  (:mod:`fedsim.engine.pool`), one per ``simulation.num_cpus_per_client`` CPUs;
- ``flower``: Flower's simulation engine, one virtual SuperNode per client (one Ray
  actor per ``num_cpus_per_client`` CPUs runs them); kept for fidelity checks;
- ``inprocess``: the ClientApp called in this process (:mod:`fedsim.engine.inprocess`).
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedsim.config import Config

from .server import Progress, run_server


def quiet_environment(run_dir: Path) -> None:
    """Environment that keeps Flower and Ray quiet and their files inside the run."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ["FLWR_HOME"] = str(run_dir / ".flwr")
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)


def backend_config(cfg: Config) -> dict[str, Any]:
    init_args: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": False, "include_dashboard": False}
    if cfg.simulation.ray_address:
        init_args["address"] = cfg.simulation.ray_address
    else:
        init_args["num_cpus"] = os.cpu_count() or 1
    return {
        "init_args": init_args,
        "client_resources": {"num_cpus": cfg.simulation.num_cpus_per_client, "num_gpus": 0.0},
    }


def simulate_pool(cfg: Config, run_dir: Path, progress: Progress | None = None,
                  say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``cfg`` on the worker-pool backend (:mod:`fedsim.engine.pool`)."""
    import ray

    from .pool import PoolGrid

    started_ray = not ray.is_initialized()
    # the server's own imports (torch, the model) overlap Ray's start-up
    warm = threading.Thread(target=importlib.import_module, args=("fedsim.models",), daemon=True)
    warm.start()
    grid = PoolGrid(cfg, run_dir, say=say)
    try:
        return run_server(grid, cfg, run_dir, progress)
    finally:
        grid.shutdown()
        if started_ray:
            ray.shutdown()


def simulate(cfg: Config, run_dir: Path, progress: Progress | None = None,
             say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``cfg`` on its ``simulation.backend``; return the summary (re-raising a server error).

    ``say`` receives start-up progress lines (pool backend).
    """
    quiet_environment(run_dir)
    if cfg.simulation.backend == "pool":
        return simulate_pool(cfg, run_dir, progress, say)
    from fedsim.clients.app import app as client_app

    if cfg.simulation.backend == "inprocess":
        from .inprocess import InProcessGrid

        return run_server(InProcessGrid(client_app, cfg.data.num_clients), cfg, run_dir, progress)
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation  # imports Flower's SuperLink: seconds
    outcome: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            outcome["summary"] = run_server(grid, cfg, run_dir, progress)
        except BaseException as err:  # surfaced to the caller below
            outcome["error"] = err
            raise

    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=cfg.data.num_clients,
                   backend_config=backend_config(cfg))
    if "error" in outcome:
        raise outcome["error"]
    if "summary" not in outcome:
        raise RuntimeError("the simulation ended without a result; see the log above")
    return outcome["summary"]
