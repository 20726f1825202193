"""Fuzz: random reply metrics, example counts and payloads through the wrapper.

Four hand-written clients on the in-process grid each send, per case, fedsim's honest
reply or one with random metrics (documented and foreign keys; NaN, inf, huge, negative
values; missing required ones), a random ``num-examples`` claim and a randomly mutated
payload (tests/test_fuzz_payloads.py's mutations). The property: the round completes,
every client is accounted for (ok, or rejected with a reason), and the new model is
either refused (None) or finite and equal to the size-weighted mean of the accepted
updates. ``pytest -s`` prints the counts.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz_payloads import mutate
from test_reply_guard import SHAPES, SIZES, Clients, honest, one_round

COUNTS: collections.Counter[str] = collections.Counter()
FOREIGN_KEYS = ["accuracy", "num_examples", "Num-Examples", "train-loss ", "\u0661", "", "x" * 300]
VALUES = (st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2**63, 2**63 - 1)
          | st.sampled_from([0.0, -1.0, 1e300, 1e-300, float("nan"), float("inf")]))


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    print(f"\nfuzz replies: {COUNTS['rounds']} rounds, {COUNTS['clients']} client replies, "
          f"{COUNTS['rejected']} rejected, {COUNTS['ok']} accepted, {COUNTS['failed']} failed on the client "
          f"(unserializable), {COUNTS['refused']} aggregates refused")


def random_reply(data: st.DataObject, cid: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    payload, metrics = honest(cid)
    if data.draw(st.booleans(), label=f"client {cid}: random metrics"):
        keys = st.sampled_from(["num-examples", "train-loss", "steps", "train-s", "encode-s", "numpy-trainer",
                                "ef21-L", *FOREIGN_KEYS])
        metrics = data.draw(st.dictionaries(keys, VALUES, max_size=6), label=f"client {cid}: metrics")
        if data.draw(st.booleans()):  # usually a claim near the truth, else anything
            metrics["num-examples"] = data.draw(st.sampled_from([SIZES[cid], SIZES[cid] + 0.4, SIZES[cid] + 1]))
    if data.draw(st.booleans(), label=f"client {cid}: mutated payload"):
        for _ in range(data.draw(st.integers(1, 3))):
            payload = mutate(payload, data)
    return payload, metrics


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_replies_complete_the_round_with_a_finite_model(data):
    sent: dict[int, tuple[dict[str, np.ndarray], dict[str, Any]]] = {c: random_reply(data, c) for c in SIZES}
    wrapper, arrays = one_round(Clients({c: (lambda cid: sent[cid]) for c in SIZES}))
    stats = wrapper.stats
    entries = {e.client: e for e in stats.clients}
    assert set(entries) == set(SIZES)
    # "failed": the client could not even send it (an object array: Flower refuses to serialize)
    assert all(e.status in ("ok", "rejected", "failed") for e in entries.values())
    assert all(e.reason for e in entries.values() if e.status != "ok")
    ok = sorted(c for c, e in entries.items() if e.status == "ok")
    rejected = sum(e.status == "rejected" for e in entries.values())
    assert (stats.replied, stats.rejected, stats.failed) == (len(ok), rejected, len(SIZES) - len(ok) - rejected)
    COUNTS.update(rounds=1, clients=len(SIZES), ok=len(ok), rejected=rejected, failed=stats.failed,
                  refused=stats.model_refused)
    if not ok:
        assert arrays is None
        return
    if arrays is None:
        assert stats.model_refused == 1
        return
    got = arrays.to_numpy_ndarrays()
    assert all(np.isfinite(a).all() for a in got)
    total = sum(SIZES[c] for c in ok)  # the weights are the sizes from discovery, never the claims
    for i, a in enumerate(got):
        expected = sum(SIZES[c] * sent[c][0][f"{i}.x"].astype(np.float64) for c in ok) / total
        np.testing.assert_allclose(a, expected.reshape(list(SHAPES.values())[i]), rtol=1e-5, atol=1e-30)
