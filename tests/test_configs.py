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


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_runs_two_rounds(path, tmp_path):
    """Every shipped experiment really runs (in process, two rounds) and evaluates."""
    from conftest import run_inprocess

    from fedsim.metrics import read_rows

    cfg = load_config(path, ["rounds=2", "eval_every=1", "simulation.backend=inprocess",
                             "output.progress=false", "output.plots=false"])
    if cfg.data.path and not Path(cfg.data.path).exists():
        pytest.skip(f"{path.name} reads {cfg.data.path}, which is not there: it is a subset that "
                    "`python benchmarks/fashion_cnn.py` writes from Fashion-MNIST's IDX files (make data)")
    summary = run_inprocess(cfg, tmp_path)
    rows = read_rows(tmp_path)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["replied"] > 0 for r in rows[1:]), rows
    assert summary["final_accuracy"] is not None and summary["total_bytes_up"] > 0
