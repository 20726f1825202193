"""fedsim sweep: grid parsing, planning, a tiny sweep checked against its runs' summaries by hand,
and resuming (a finished combination is not run again)."""

import json
import statistics

import pytest
import yaml
from conftest import small_config

from fedsim.config import ConfigError
from fedsim.sweep import (
    Combo,
    SweepSpec,
    aggregate,
    combinations,
    combo_overrides,
    format_cell,
    load_spec,
    parse_grid,
    parse_seeds,
    run_sweep,
    split_top_level,
    write_results,
)

# digits, an MLP, 6 clients, 3 a round, 2 rounds, in process
TINY = small_config("simulation.backend=inprocess", "rounds=2", "target_accuracy=0.3", "data.num_clients=6",
                    "clients_per_round=3", "model.params={hidden: 16}").model_dump(mode="json")


def test_split_top_level_keeps_brackets_and_quotes_together():
    assert split_top_level("a, {x: 1, y: 2},[1, 2],'p,q'") == ["a", "{x: 1, y: 2}", "[1, 2]", "'p,q'"]


def test_parse_grid_values_as_yaml_and_errors():
    grid = parse_grid(["codec.name=identity,dgc", "train.lr=0.1,0.01", "codec.params={density: 0.1},{}"])
    assert grid == {"codec.name": ["identity", "dgc"], "train.lr": [0.1, 0.01], "codec.params": [{"density": 0.1}, {}]}
    for bad in (["codec.name"], ["=a,b"], ["seed=0,1"], ["a=1", "a=2"]):
        with pytest.raises(ConfigError):
            parse_grid(bad)


def test_parse_seeds():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0,3,7") == [0, 3, 7]
    assert parse_seeds("5") == [5] and parse_seeds(2) == [2] and parse_seeds([1, 2]) == [1, 2]
    for bad in ("a-b", "1,1", "x", True, 3.5, [True], [1, "2"], {"a": 1}, []):  # a sweep YAML may hold any value
        with pytest.raises(ConfigError):
            parse_seeds(bad)


def test_combinations_in_grid_order_with_every_seed():
    spec = SweepSpec(None, {"codec.name": ["identity", "dgc"], "strategy.name": ["fedavg", "fedmedian"]}, [0, 1])
    combos = combinations(spec)
    assert len(combos) == 8
    assert combos[0] == Combo((("codec.name", "identity"), ("strategy.name", "fedavg")), 0)
    assert combos[-1].name == "codec=dgc_strategy=fedmedian_seed=1"
    assert combos[-1].label == "codec=dgc, strategy=fedmedian"
    assert len({c.name for c in combos}) == 8
    odd = Combo((("codec.params", {"density": 0.1}),), 0)
    other = Combo((("codec.params", {"density": 0.2}),), 0)
    assert "/" not in odd.name and " " not in odd.name and odd.name != other.name


def test_a_plugin_renamed_by_the_grid_loses_the_base_params(tmp_path):
    from fedsim.api import resolve_config

    base = resolve_config({**TINY, "codec": {"name": "qsgd", "params": {"levels": 1}}})
    spec = SweepSpec(None, {"codec.name": ["identity", "qsgd"]}, [3])
    ident, qsgd = combinations(spec)
    assert combo_overrides(spec, ident, base) == ["codec.params={}", 'codec.name="identity"', "seed=3"]
    assert combo_overrides(spec, qsgd, base) == ['codec.name="qsgd"', "seed=3"]  # same plugin: params kept
    given = SweepSpec(None, {"codec.name": ["identity"]}, [0], ["codec.params={}"])
    assert "codec.params={}" not in combo_overrides(given, combinations(given)[0], base)[1:]


def test_sweep_file(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(
        {"config": "base.yaml", "grid": {"codec.name": ["identity", "fp16"]}, "seeds": "0-1", "set": {"rounds": 1}}))
    spec = load_spec(tmp_path / "s.yaml", grid=["train.lr=0.1,0.2"])
    assert spec.config == tmp_path / "base.yaml" and spec.seeds == [0, 1] and spec.sets == ["rounds=1"]
    assert spec.grid == {"codec.name": ["identity", "fp16"], "train.lr": [0.1, 0.2]}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"grid": {"a": []}}))
    with pytest.raises(ConfigError):
        load_spec(tmp_path / "bad.yaml")


def test_tiny_sweep_table_from_the_runs_and_resume(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY))
    spec = load_spec(tmp_path / "base.yaml", ["codec.name=identity,fp16"], "0-1")
    out = tmp_path / "sweep"
    lines = []
    planned = run_sweep(spec, out, jobs=2, report=lines.append)
    assert [p.status for p in planned] == ["ran"] * 4, [p.error for p in planned]
    rows, plots = write_results(planned, spec, out)
    assert {p.name for p in plots} >= {"accuracy_vs_round.png", "loss_vs_uplink.png"}
    for codec, row in zip(["identity", "fp16"], rows):
        s = [json.loads((out / f"codec={codec}_seed={seed}" / "summary.json").read_text()) for seed in (0, 1)]
        assert row["codec.name"] == codec and row["runs"] == 2 and row["seeds"] == "0 1"
        finals = [x["final_accuracy"] for x in s]
        assert row["final_accuracy_mean"] == pytest.approx((finals[0] + finals[1]) / 2)
        assert row["final_accuracy_sd"] == pytest.approx(abs(finals[0] - finals[1]) / 2 ** 0.5)
        ups = [x["total_bytes_up"] for x in s]
        assert row["total_bytes_up_mean"] == pytest.approx(sum(ups) / 2)
        assert row["best_accuracy_mean"] == pytest.approx(statistics.fmean(x["best_accuracy"] for x in s))
        reached = [x["round_to_target"] for x in s if x["round_to_target"] is not None]
        assert row["round_to_target_n"] == len(reached)
    # fp16 sends half the bytes of identity (same replies): the table shows it
    assert rows[1]["total_bytes_up_mean"] < 0.51 * rows[0]["total_bytes_up_mean"]
    csv_text = (out / "summary.csv").read_text()
    assert csv_text.splitlines()[0].startswith("codec.name,runs,seeds,final_accuracy_mean")
    # each run directory is a normal run: config copy with its seed and codec
    cfg = yaml.safe_load((out / "codec=fp16_seed=1" / "config.yaml").read_text())
    assert cfg["seed"] == 1 and cfg["codec"]["name"] == "fp16"
    # rerun: nothing runs again; an interrupted run (no summary.json) is rerun
    (out / "codec=fp16_seed=1" / "summary.json").unlink()
    before = (out / "codec=identity_seed=0" / "metrics.jsonl").stat().st_mtime_ns
    again = run_sweep(spec, out, jobs=1, report=lines.append)
    assert [p.status for p in again] == ["done", "done", "done", "ran"]
    assert (out / "codec=identity_seed=0" / "metrics.jsonl").stat().st_mtime_ns == before
    assert aggregate(again, spec) == rows


def test_a_finished_run_of_another_config_is_not_mixed_in(tmp_path):
    from fedsim.api import resolve_config, start_run
    from fedsim.sweep import plan

    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**TINY, "rounds": 1}))
    spec = load_spec(tmp_path / "base.yaml", [], "0")
    finished = start_run(resolve_config({**TINY, "rounds": 1, "train": {"lr": 0.3}}), run_dir=tmp_path / "s" / "seed=0")
    (finished / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="another config"):
        plan(spec, tmp_path / "s")
    start_run(resolve_config({**TINY, "rounds": 1}), run_dir=finished)  # the same config: finished, skipped
    assert [p.status for p in plan(spec, tmp_path / "s")[1]] == ["done"]


def test_format_cell():
    row = {"runs": 3, "final_accuracy_mean": 0.9, "final_accuracy_sd": 0.01, "final_accuracy_n": 3,
           "round_to_target_mean": 7.5, "round_to_target_sd": 0.7071, "round_to_target_n": 2,
           "total_bytes_up_mean": 2.5e6, "total_bytes_up_sd": None, "total_bytes_up_n": 1,
           "best_accuracy_mean": None, "best_accuracy_sd": None, "best_accuracy_n": 0}
    assert format_cell(row, "final_accuracy") == "0.9000 ± 0.0100"
    assert format_cell(row, "round_to_target") == "7.5 ± 0.7 (2/3)"
    assert format_cell(row, "total_bytes_up") == "2.500 (1/3)"
    assert format_cell(row, "best_accuracy") == "-"
