"""fedsim.run: the Python API writes the run directory `fedsim run` writes and returns its results."""

import json
import subprocess
import sys

import pytest
import yaml
from conftest import small_config

import fedsim
from fedsim.api import Result, load_result, override_list, resolve_config
from fedsim.config import ConfigError

BASE = small_config("simulation.backend=inprocess", "rounds=2", "data.num_clients=6", "clients_per_round=3",
                    "model.params={hidden: 16}").model_dump(mode="json")


def test_overrides_from_keywords_and_a_mapping():
    assert override_list({"train.lr": 0.1}, rounds=3, codec__name="fp16") == \
        ["train.lr=0.1", "rounds=3", 'codec.name="fp16"']
    cfg = resolve_config(BASE, override_list({"train.lr": 0.2}, codec={"name": "topk", "params": {"density": 0.5}},
                                             data__partition__kind="dirichlet"))
    assert cfg.train.lr == 0.2 and cfg.codec.params == {"density": 0.5} and cfg.data.partition.kind == "dirichlet"
    assert cfg.data.num_clients == 6  # the rest of the mapping is kept
    with pytest.raises(ConfigError, match="roundz"):
        resolve_config(BASE, override_list(roundz=1))
    with pytest.raises(ConfigError, match="unknown codec"):
        resolve_config(BASE, override_list(codec__name="nope"))


def test_run_returns_the_run_directory_and_metrics(tmp_path):
    res = fedsim.run(BASE, {"train.lr": 0.2}, out=tmp_path, codec__name="fp16", output__plots=True)
    assert isinstance(res, Result) and res.run_dir.parent == tmp_path
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "clients.jsonl", "summary.json",
                 "accuracy_vs_round.png", "loss_vs_uplink.png"):
        assert (res.run_dir / name).is_file(), name
    copy = yaml.safe_load((res.run_dir / "config.yaml").read_text())
    assert copy["train"]["lr"] == 0.2 and copy["codec"]["name"] == "fp16"
    assert res.summary == json.loads((res.run_dir / "summary.json").read_text())
    assert [r["round"] for r in res.rounds] == [0, 1, 2]
    assert res.column("test_accuracy")[-1] == res.summary["final_accuracy"]
    assert res.rounds[-1]["cum_bytes_up"] == res.summary["total_bytes_up"] > 0
    again = load_result(res.run_dir)
    assert again.summary == res.summary and again.rounds == res.rounds and again.config == res.config
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pandas"):
            res.to_dataframe()
    else:
        df = res.to_dataframe()
        assert list(df["round"]) == [0, 1, 2] and df["test_accuracy"].iloc[-1] == res.summary["final_accuracy"]


def test_same_seed_same_results_and_progress_callback(tmp_path):
    seen = []
    a = fedsim.run(BASE, out=tmp_path, progress=seen.append)
    b = fedsim.run(BASE, run_dir=tmp_path / "exact")
    assert [r["round"] for r in seen] == [1, 2]
    assert b.run_dir == tmp_path / "exact"
    assert a.column("test_accuracy") == b.column("test_accuracy")


def test_default_config_is_the_quickstart():
    from fedsim.api import default_config_path

    assert default_config_path().name == "quickstart.yaml"
    assert resolve_config(None).name == "quickstart"


def test_import_fedsim_imports_neither_torch_nor_ray():
    code = "import sys, fedsim; fedsim.run; fedsim.Result; print(sorted({'torch', 'ray'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_fedsim_run_without_argument_runs_the_default_and_prints_the_dense_cost(tmp_path):
    from typer.testing import CliRunner

    from fedsim.api import dense_uplink_bytes
    from fedsim.cli import app

    shrink = ["simulation.backend=inprocess", "data.name=digits", "data.num_clients=8", "clients_per_round=4",
              "model.name=mlp", "model.params={hidden: 16}", "rounds=2", "output.plots=false", "output.progress=false"]
    res = CliRunner().invoke(app, ["run", "--out", str(tmp_path)] + [a for s in shrink for a in ("--set", s)])
    assert res.exit_code == 0, res.output
    assert "quickstart" in res.output and "codec qsgd" in res.output and "network 4g-phone 60%" in res.output
    (run_dir,) = tmp_path.glob("quickstart-*")
    clients = [json.loads(line) for line in (run_dir / "clients.jsonl").read_text().splitlines()]
    dense_model = (64 * 16 + 16 + 16 * 10 + 10) * 4  # the MLP's float32 bytes
    uploaded = [c for c in clients if c["bytes_up"] > 0]
    assert dense_uplink_bytes(run_dir) == len(uploaded) * dense_model
    up = json.loads((run_dir / "summary.json").read_text())["total_bytes_up"]
    dense_mb = len(uploaded) * dense_model / 1e6
    assert f"{up / 1e6:.2f} MB up; the same replies as dense float32 updates: {dense_mb:.2f} MB" \
        in res.output.replace("\n", " ")
    assert "simulated time on the devices' network" in res.output
