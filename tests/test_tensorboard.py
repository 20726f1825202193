"""output.tensorboard: per-round scalars as TensorBoard event files, read back with
TensorBoard's own EventAccumulator."""

import pytest
from conftest import small_config

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install 'fedsim[tensorboard]')")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from fedsim.tensorboard_log import SUBDIR, ScalarWriter, scalars  # noqa: E402


def read_back(directory):
    acc = EventAccumulator(str(directory))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_scalars_keeps_finite_numbers_only():
    row = {"round": 3, "test_accuracy": 0.5, "train_loss": None, "ok": True, "profile": "x", "bytes_up": 7,
           "sim_time": float("nan")}
    assert scalars(row) == {"test_accuracy": 0.5, "bytes_up": 7.0}


def test_writer_round_trip(tmp_path):
    w = ScalarWriter(tmp_path)
    w.round({"round": 1, "test_accuracy": 0.25, "bytes_up": 1000})
    w.round({"round": 2, "test_accuracy": 0.75, "bytes_up": 3000})
    w.backfill([{"round": 0, "test_accuracy": 0.125, "bytes_up": 0}, {"round": 1, "test_accuracy": 9.0}])
    w.close()
    got = read_back(tmp_path / SUBDIR)
    assert sorted(got["test_accuracy"]) == [(0, 0.125), (1, 0.25), (2, 0.75)]  # round 1 not written twice
    assert sorted(got["bytes_up"]) == [(0, 0.0), (1, 1000.0), (2, 3000.0)]


def test_a_run_with_tensorboard_on_writes_every_round(tmp_path):
    import fedsim

    cfg = small_config("simulation.backend=inprocess", "rounds=2", "data.num_clients=6", "clients_per_round=3",
                       "model.params={hidden: 16}", "output.tensorboard=true",
                       "network={mix: {4g-phone: 0.5, rpi-wifi: 0.5}}")
    res = fedsim.run(cfg, out=tmp_path)
    got = read_back(res.run_dir / SUBDIR)
    for tag in ("test_accuracy", "test_loss", "bytes_up", "cum_bytes_up"):
        assert [s for s, _ in sorted(got[tag])] == [0, 1, 2], tag
    for tag in ("train_loss", "rejected", "failed", "sim_time", "dropped_mid"):
        assert [s for s, _ in sorted(got[tag])] == [1, 2], tag
    for row in res.rounds:
        assert dict(got["test_accuracy"])[row["round"]] == pytest.approx(row["test_accuracy"], rel=1e-6)
        if "sim_time" in row:
            assert dict(got["sim_time"])[row["round"]] == pytest.approx(row["sim_time"], rel=1e-6)
