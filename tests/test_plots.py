"""Plots: labels from what differs between configs, mean +- sd bands, the figures written,
and `fedsim compare` using both."""

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from fedsim.cli import app
from fedsim.plots import band, common_title, differing_labels, flatten, plot_bands, plot_runs, short_key


def rows(accs, up=1000, sim=None):
    out = []
    for i, a in enumerate(accs):
        r = {"round": i, "test_accuracy": a, "test_loss": 1.0 - a, "cum_bytes_up": up * i, "cum_bytes_down": up * i,
             "wall_time": float(i)}
        if sim is not None and i:
            r["sim_time"] = sim * i
        out.append(r)
    return out


def test_labels_name_only_what_differs():
    a = {"name": "x", "seed": 0, "codec": {"name": "dgc", "params": {"density": 0.01}}, "output": {"dir": "a"}}
    b = {"name": "y", "seed": 0, "codec": {"name": "identity", "params": {}}, "output": {"dir": "b"}}
    assert flatten(a)["codec.params.density"] == 0.01
    assert short_key("codec.name") == "codec" and short_key("codec.params.density") == "codec.density"
    assert differing_labels([a, b]) == ["codec=dgc, codec.density=0.01", "codec=identity"]
    assert differing_labels([a, dict(a, name="z")]) is None  # names and output dirs are not differences
    base = {"data": {"name": "digits"}, "strategy": {"name": "fedavg"}, "codec": {"name": "dgc"}}
    assert common_title([base, dict(base, codec={"name": "fp16"})]) == "data digits, strategy fedavg"


def test_band_is_mean_and_sample_sd_at_common_rounds():
    x, y, sd = band([rows([0.1, 0.5, 0.7]), rows([0.3, 0.7])], "round", "test_accuracy")
    assert list(x) == [0, 1]
    assert y == pytest.approx([0.2, 0.6])
    assert sd == pytest.approx([np.std([0.1, 0.3], ddof=1), np.std([0.5, 0.7], ddof=1)])
    x, y, sd = band([rows([0.1, 0.5], up=1e6)], "cum_bytes_up", "test_accuracy", scale=1e6)
    assert list(x) == [0.0, 1.0] and list(sd) == [0.0, 0.0]


def test_figures_per_metric_and_axis(tmp_path):
    paths = plot_runs([("a", rows([0.1, 0.5, 0.8])), ("b", rows([0.1, 0.4, 0.6]))], tmp_path, prefix="p_")
    assert sorted(p.name for p in paths) == sorted(f"p_{m}_vs_{x}.png" for m in ("accuracy", "loss")
                                                   for x in ("round", "uplink"))
    paths = plot_bands([("codec=a", [rows([0.1, 0.5], sim=2.0), rows([0.2, 0.6], sim=3.0)])], tmp_path, title="t")
    assert {p.name for p in paths} >= {"accuracy_vs_simtime.png", "loss_vs_simtime.png"}
    assert all(p.stat().st_size > 5000 for p in paths)


def write_run(d, accs, cfg):
    from fedsim.runstatus import write_status

    d.mkdir()
    write_status(d, "finished", len(accs) - 1, len(accs) - 1)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(accs)))
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_compare_legends_from_config_and_round_to_target(tmp_path):
    cfg = {"name": "q", "target_accuracy": 0.6, "data": {"name": "digits"}, "codec": {"name": "identity"}}
    write_run(tmp_path / "q-20260101-000000", [0.1, 0.5, 0.8], cfg)
    write_run(tmp_path / "q-20260101-000001", [0.1, 0.7, 0.9], dict(cfg, codec={"name": "dgc"}))
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "q-20260101-000000"), str(tmp_path / "q-20260101-000001"),
                                   "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "codec=identity" in res.output and "codec=dgc" in res.output and "20260101" not in res.output
    table = [line for line in res.output.splitlines() if "codec=" in line]
    assert table[0].rstrip(" │").endswith("2") and table[1].rstrip(" │").endswith("1")  # round to target 0.6
    assert (tmp_path / "compare_loss_vs_round.png").is_file()
