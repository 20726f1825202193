"""Every shipped experiment in configs/ loads, validates and names known plugins."""

from pathlib import Path

import pytest

from fedsim.config import check_plugins, load_config

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_configs_directory_is_not_empty():
    assert len(CONFIGS) >= 1


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_loads_and_its_plugins_resolve(path):
    cfg = load_config(path)
    check_plugins(cfg)  # raises ConfigError naming the key on an unknown plugin or parameter
    assert cfg.name, f"{path.name}: set a name (it names the run directory)"
