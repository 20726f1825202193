import json

from typer.testing import CliRunner

from fedsim.cli import app

runner = CliRunner()


def test_unknown_key_wrong_type_unknown_plugin_exit_2_with_one_line():
    for args, needle in [
        (["--set", "roundz=3"], "config key 'roundz': unknown key"),
        (["--set", "rounds=three"], "config key 'rounds'"),
        (["--set", "strategy.name=nope"], "unknown strategy 'nope'; known: "),
        (["--set", "codec.name=nope"], "unknown codec 'nope'; known: "),
    ]:
        res = runner.invoke(app, ["run", "configs/quickstart.yaml", *args])
        assert res.exit_code == 2, res.output
        text = res.output.strip()
        assert needle in text and "Traceback" not in text
        assert text.startswith("error:")


def test_missing_config_file():
    res = runner.invoke(app, ["run", "no/such.yaml"])
    assert res.exit_code == 2 and "not found" in res.output


def write_run(d, accs, up):
    d.mkdir()
    rows = [{"round": i, "test_accuracy": a, "test_loss": 1.0, "cum_bytes_up": up * i, "cum_bytes_down": up * i,
             "wall_time": float(i)} for i, a in enumerate(accs)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_compare_overlays_runs_and_prints_a_table(tmp_path):
    write_run(tmp_path / "dense", [0.1, 0.5, 0.8], 1_000_000)
    write_run(tmp_path / "sparse", [0.1, 0.4, 0.7], 10_000)
    res = runner.invoke(app, ["compare", str(tmp_path / "dense"), str(tmp_path / "sparse"), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "dense" in res.output and "sparse" in res.output and "0.8000" in res.output
    assert (tmp_path / "compare_accuracy_vs_round.png").stat().st_size > 1000
    assert (tmp_path / "compare_accuracy_vs_uplink.png").is_file()
    res = runner.invoke(app, ["compare", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "not a fedsim run directory" in res.output


def test_plugins_lists_every_kind():
    res = runner.invoke(app, ["plugins"])
    assert res.exit_code == 0
    for needle in ("strategy", "fedavg", "codec", "identity", "attack", "nan", "dataset", "mnist5k", "model", "cnn"):
        assert needle in res.output
