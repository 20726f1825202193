"""The network model inside the server loop (in-process grid, the real ClientApp)."""

import json

import pytest
from conftest import run_inprocess

from fedsim.metrics import read_rows


def clients(run_dir):
    return [json.loads(l) for l in (run_dir / "clients.jsonl").read_text().splitlines()]


def test_ideal_network_gives_exactly_the_model_without_one(tmp_path, cfg_factory):
    """Differential: zero latency, infinite bandwidth, never dropping == no network model."""
    plain = run_inprocess(cfg_factory(), tmp_path / "plain")
    ideal = run_inprocess(cfg_factory("network={mix: {ideal: 1.0}}"), tmp_path / "ideal")
    assert ideal["final_loss"] == plain["final_loss"] and ideal["final_accuracy"] == plain["final_accuracy"]
    a, b = clients(tmp_path / "plain"), clients(tmp_path / "ideal")
    def key(rows: list[dict]) -> list[tuple]:
        return [(c["client"], c["train_loss"], c["bytes_up"]) for c in rows]

    assert key(a) == key(b)
    rows = read_rows(tmp_path / "ideal")[1:]
    assert all(r["sim_round_s"] == 0.0 and r["dropped_before"] == 0 and r["dropped_mid"] == 0 for r in rows)


LOSSY = ("network={mix: {lossy: 1.0}, profiles: {lossy: {base: ideal, rtt_ms: 100, "
         "dropout_before: 0.15, dropout_mid: 0.15}}}")


def test_thirty_percent_dropout_completes_every_round_and_never_aggregates_dropped(tmp_path, cfg_factory):
    cfg = cfg_factory(LOSSY, "data.num_clients=10", "clients_per_round=10", "rounds=6")
    run_inprocess(cfg, tmp_path)
    rows, cl = read_rows(tmp_path)[1:], clients(tmp_path)
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5, 6]
    dropped = sum(r["dropped_before"] + r["dropped_mid"] for r in rows)
    assert 6 <= dropped <= 33  # 30% of 60 = 18 expected
    for r in rows:
        mine = [c for c in cl if c["round"] == r["round"]]
        assert r["replied"] == sum(c["status"] == "ok" for c in mine) == 10 - r["dropped_before"] - r["dropped_mid"]
        assert r["bytes_up"] == sum(c["bytes_up"] for c in mine)  # dropped clients sent nothing that arrived
        assert all(c["bytes_up"] == 0 for c in mine if c["status"].startswith("dropped"))
        assert all(c["bytes_down"] == 0 for c in mine if c["status"] == "dropped-before")
        assert r["sim_round_s"] >= 0.1  # the 100 ms round trip
    assert rows[-1]["sim_time"] == pytest.approx(sum(r["sim_round_s"] for r in rows))


def test_deadline_and_overcommit_keep_the_first_k(tmp_path, cfg_factory):
    # two speeds: "slow" clients take 10 s to compute, "fast" ones 1 s; K = 4 of 8 sampled
    net = ("network={mix: {fast: 0.5, slow: 0.5}, overcommit: 1.0, profiles: {"
           "fast: {base: ideal, ms_per_sample: 1000}, slow: {base: ideal, ms_per_sample: 10000}}}")
    cfg = cfg_factory(net, "data.num_clients=10", "clients_per_round=4", "rounds=2",
                      "data.partition.kind=iid", "train.batch_size=1000")
    run_inprocess(cfg, tmp_path)
    rows, cl = read_rows(tmp_path)[1:], clients(tmp_path)
    for r in rows:
        mine = [c for c in cl if c["round"] == r["round"]]
        assert r["sampled"] == 8 and r["replied"] == 4 and r["not_needed"] == 4
        kept = [c for c in mine if c["status"] == "ok"]
        late = [c for c in mine if c["status"] == "not-needed"]
        assert max(c["arrival_s"] for c in kept) <= min(c["arrival_s"] for c in late)


def test_deadline_drops_the_slow(tmp_path, cfg_factory):
    net = ("network={mix: {fast: 0.5, slow: 0.5}, deadline_s: 5000, profiles: {"
           "fast: {base: ideal, ms_per_sample: 1}, slow: {base: ideal, ms_per_sample: 100000}}}")
    cfg = cfg_factory(net, "data.num_clients=10", "clients_per_round=10", "rounds=1", "data.partition.kind=iid")
    run_inprocess(cfg, tmp_path)
    r = read_rows(tmp_path)[1]
    assert (r["replied"], r["missed_deadline"]) == (5, 5) and r["sim_round_s"] == 5000
    assert r["test_accuracy"] is not None


def test_summary_reports_simulated_time_to_target(tmp_path, cfg_factory):
    net = "network={mix: {slowish: 1.0}, profiles: {slowish: {base: ideal, rtt_ms: 2000}}}"
    cfg = cfg_factory(net, "target_accuracy=0.6", "rounds=4", "train.local_epochs=2")
    summary = run_inprocess(cfg, tmp_path)
    rows = read_rows(tmp_path)
    hit = next(r for r in rows if r["test_accuracy"] >= 0.6)
    assert hit["round"] >= 1 and summary["round_to_target"] == hit["round"]
    assert summary["sim_time_to_target"] == pytest.approx(2.0 * hit["round"])  # one 2 s round trip a round
