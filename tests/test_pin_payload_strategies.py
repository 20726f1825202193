"""Pins the numbers of the payload-consuming strategies across the strategy seam refactor.

The digests below were recorded on commit 5d6ba8a (before ``bind_wrapper`` was replaced by
``RoundView`` / ``PayloadStrategy``, the server-side attack moved to
:mod:`fedsim.attacks.server` and the message keys to :mod:`fedsim.keys`). Each case runs
three rounds through the wrapper (in-process grid, the real ClientApp) with an omniscient
server-side attack, so that the forging path is pinned too, and hashes the bytes of every
model returned, the strategy's ``round_metrics`` and the round's counts. A refactor that
changes one bit of any of them fails here; an intended change of the numbers must record
new digests and say why in its commit.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from conftest import small_config
from flwr.app import ConfigRecord

from fedsim.clients.app import app
from fedsim.engine.inprocess import InProcessGrid
from fedsim.engine.server import Evaluator, build_wrapper, discover

CASES = {
    "ef21w": ("data.name=digits-binary", "model.name=logreg-ncvx", "model.params={}", "data.num_clients=6",
              "clients_per_round=6", "strategy.name=ef21w",
              "strategy.params={compressor: topk, k: 3, dtype: float64, monitor: false}",
              "attack={name: alie, clients: [2]}"),
    "ef21w-codec": ("data.name=digits-binary", "model.name=logreg-ncvx", "model.params={}", "data.num_clients=6",
                    "clients_per_round=4", "strategy.name=ef21", "codec.name=topk",
                    "codec.params={density: 0.5, error_feedback: false}",
                    "strategy.params={compressor: codec, start: zero, monitor: false}",
                    "attack={name: sign_flip, clients: [1]}"),
    "monna": ("clients_per_round=10", "strategy={name: monna, params: {f: 2, lr: 0.1, beta: 0.9}}",
              "attack={name: sign_flip, clients: [3, 7]}"),
    "nested": ("strategy.name=ndqsg-nested", "codec.name=ndqsg", "codec.params={m1: 3, m2: 1, alpha: 1.0}",
               "clients_per_round=6", "attack={name: alie, clients: [0, 4, 8]}"),
    "fedavg": ("codec.name=qsgd", "clients_per_round=6", "attack={name: alie, clients: [0, 4, 8]}"),
}

# sha256 over the three rounds of each case, recorded on commit 5d6ba8a (see the docstring)
PINNED = {
    "ef21w": "3362d0dbc4df3b87845b837140599dab2d0a4afefce6d83261ca5079da9ab7d4",
    "ef21w-codec": "f6391cf546b1232c57dc190a047b8f27c9d4a07cc774d57e9fb682576218ba8f",
    "monna": "2de04a8fdb7cc69f50bcec4cdf46b47ff8e164640b22a7bb4816e79a34abf5cf",
    "nested": "e3e2329fd17b50169e9644f802faab3f0f8c03cd6407bc75b8869609db4a854a",
    "fedavg": "1018634bed9e1ac46be3c1e38f41ba062d466fb13512a91de5e4c04fb2ee5c79",
}


def run_digest(*overrides: str, rounds: int = 3) -> str:
    """Three rounds by hand (configure -> send -> aggregate); the sha256 of what they produced."""
    cfg = small_config(*overrides)
    grid = InProcessGrid(app, cfg.data.num_clients)
    wrapper = build_wrapper(cfg)
    sizes: dict[int, int] = {}
    wrapper.bind_nodes(discover(grid, list(grid.get_node_ids()), 10, spec_json=wrapper.spec_json, sizes=sizes), sizes)
    wrapper.evaluator = Evaluator(cfg)
    arrays = wrapper.evaluator.initial_arrays()
    h = hashlib.sha256()
    for rnd in range(1, rounds + 1):
        msgs = list(wrapper.configure_train(rnd, arrays, ConfigRecord(), grid))
        new, metrics = wrapper.aggregate_train(rnd, grid.send_and_receive(msgs))
        arrays = new if new is not None else arrays
        for name, a in arrays.items():
            h.update(name.encode())
            h.update(np.ascontiguousarray(a.numpy()).tobytes())
        s = wrapper.stats
        extra = getattr(wrapper.inner, "round_metrics", None) or {}
        timeless = {k: v for k, v in (metrics or {}).items() if k not in ("train-s", "encode-s")}  # wall clock
        h.update(json.dumps({"metrics": timeless, "round": extra,
                             "counts": [s.sampled, s.replied, s.rejected, s.failed, s.bytes_up, s.bytes_down],
                             "status": [(c.client, c.status) for c in s.clients]},
                            sort_keys=True, default=repr).encode())
    return h.hexdigest()


@pytest.mark.parametrize("case", sorted(CASES))
def test_three_rounds_give_the_numbers_recorded_before_the_seam_refactor(case):
    assert run_digest(*CASES[case]) == PINNED[case]


if __name__ == "__main__":  # print the digests (to record them on a known commit)
    for name, overrides in sorted(CASES.items()):
        print(f'    "{name}": "{run_digest(*overrides)}",')
