"""Shared fixtures: small configs and an in-process runner (no Ray)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from fedsim.config import Config, load_config

logging.getLogger("flwr").setLevel(logging.ERROR)

# In CI (CI=true) hypothesis draws the same examples every run, so a red CI is reproducible
# and never a lucky draw; locally every run explores new examples.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def small_config(*overrides: str) -> Config:
    """Digits, 10 clients, 5 a round, an MLP: seconds per run in process."""
    base = ["name=test", "data.name=digits", "data.num_clients=10", "data.partition.kind=iid",
            "clients_per_round=5", "rounds=3", "model.name=mlp", "model.params={hidden: 32}",
            "train.lr=0.1", "train.batch_size=16", "output.progress=false", "output.plots=false",
            "checkpoint.min_interval_s=0"]  # tests resume from a checkpoint of every round
    return load_config(None, base + list(overrides))


def run_inprocess(cfg: Config, run_dir: Path, grid: Any = None) -> dict[str, Any]:
    from fedsim.clients.app import app
    from fedsim.engine.inprocess import InProcessGrid
    from fedsim.engine.server import run_server

    grid = grid or InProcessGrid(app, cfg.data.num_clients)
    return run_server(grid, cfg, run_dir)


@pytest.fixture
def cfg_factory():
    return small_config
