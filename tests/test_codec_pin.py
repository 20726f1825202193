"""Pin: the exact bytes every codec sends, and every array it keeps, over four rounds.

Recorded on commit 5d6ba8a (before codec state became typed and DGC a composition), on
the numpy path and on the compiled path alike (the quantizers' kernels give the same
bytes). A small model of five tensors (two matrices, a conv kernel, two biases) encodes
four rounds of updates for two clients; each round the client's state goes through the
arrays the client store keeps (``"<tensor>.<field>"`` keys, as a checkpoint holds them)
and comes back, as it does between the rounds a client takes part in. The SHA-256 of the
payloads (keys in order, dtype, shape, bytes) and of the stored state arrays, over all
rounds and clients, must not change: a refactoring of the codecs may not change a single
bit on the wire or in the store, nor a key's name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from fedsim.codecs.cycle import encode_round
from fedsim.codecs.model import tensor_infos
from fedsim.ef21.wire import CodecWire
from fedsim.registry import CODECS

INFOS = tensor_infos([("fc1.weight", (16, 12)), ("fc1.bias", (16,)), ("conv.weight", (4, 2, 3, 3)),
                      ("fc2.weight", (40, 25)), ("fc2.bias", (4,))])
SEED, ROUNDS, CLIENTS = 11, 4, (0, 3)


def digest(h: Any, arrays: Mapping[str, np.ndarray]) -> None:
    for key, a in arrays.items():
        a = np.ascontiguousarray(a)
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())


def update(round_: int, client: int) -> list[np.ndarray]:
    rng = np.random.default_rng([SEED, round_, client])
    return [rng.standard_normal(i.shape).astype(np.float32) * np.float32(0.1 * (1 + j)) for j, i in enumerate(INFOS)]


def client_round(codec: Any, saved: dict[str, np.ndarray], round_: int, client: int,
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One client round as the ``train`` task runs it: restore, encode, save."""
    return encode_round(codec, update(round_, client), INFOS, saved, SEED, round_, client)


def pin(name: str, params: dict[str, Any]) -> tuple[str, str]:
    codec = CODECS.build(name, params)
    hp, hs = hashlib.sha256(), hashlib.sha256()
    for client in CLIENTS:
        saved: dict[str, np.ndarray] = {}
        for r in range(1, ROUNDS + 1):
            payload, saved = client_round(codec, saved, r, client)
            digest(hp, payload)
            digest(hs, saved)
    return hp.hexdigest()[:16], hs.hexdigest()[:16]


WARM = {"density": 0.05, "warmup_rounds": 3}  # warm-up active in rounds 1-3 of the 4
CASES: dict[str, tuple[str, dict[str, Any], str, str]] = {
    "dgc-default": ("dgc", {}, "beb52a0dd6fb1a32", "68cff765a8adc54e"),
    "dgc-warm": ("dgc", WARM, "c94f7b49ce865baa", "e187112fa75fe7a3"),
    "dgc-no-correction": ("dgc", {**WARM, "momentum_correction": False}, "c682e7f83bbc7e6f", "19a71e4e5f2c19d7"),
    "dgc-no-masking-m09": ("dgc", {**WARM, "momentum_masking": False, "momentum": 0.9},
                           "17a66c4afea06ad7", "8394afdf2b0cca92"),
    "dgc-clip": ("dgc", {**WARM, "clip_norm": 0.5, "num_clients": 4}, "362df0ed6f51d247", "52baf3be1d32393b"),
    "dgc-clip-no-correction": ("dgc", {**WARM, "clip_norm": 0.5, "num_clients": 4, "momentum_correction": False},
                               "172abf4f672cdcac", "a6a13bde7cc0f408"),
    "dgc-fp16-varint-sparse-small": ("dgc", {**WARM, "values": "float16", "index_coding": "delta-varint",
                                             "dense_small": False}, "17456729945e55f2", "e50108389cda798c"),
    "dgc-exact-first-round-0": ("dgc", {"density": 0.1, "warmup_rounds": 2, "first_round": 0, "sample_ratio": 1.0},
                                "48703cec014c221c", "76e5834f061a5f5b"),
    "dgc-adapt": ("dgc", {"density": 0.02, "warmup_rounds": 0, "upper": 1.0, "lower": 0.5, "max_iters": 3},
                  "8305d4362f812c6b", "409b66b3be763981"),
    "dgc-dense": ("dgc", {"density": 1.0, "momentum": 0.9}, "3811e1b1e39c9905", "108b002a4db82c61"),
    "dgc-dense-no-correction": ("dgc", {"density": 1.0, "momentum_correction": False},
                                "e80d01f4d00f4bfe", "e90c2b39296962dc"),
    "topk-ef": ("topk", {"density": 0.05}, "0f2a5054d38bcea7", "4a1b9a6e798ea4ee"),
    "topk-ef-fp16-varint": ("topk", {"density": 0.1, "values": "float16", "index_coding": "delta-varint"},
                            "11f6256cb8a0847c", "32fd69f9fd663925"),
    "topk-raw": ("topk", {"density": 0.05, "error_feedback": False}, "97df3f8337e61426", "e3b0c44298fc1c14"),
    "randk-ef": ("randk", {"density": 0.1, "scale": False, "error_feedback": True},
                 "7924bd78903b8824", "3259a6557c4c9248"),
    "randk-seeded": ("randk", {"density": 0.1, "seeded_indices": True}, "d04daca7ad3c26c6", "e3b0c44298fc1c14"),
    "dqsg": ("dqsg", {"levels": 3, "bucket": 64}, "2b98bc3f3c263d1a", "e3b0c44298fc1c14"),
    "dqsg-fp16": ("dqsg", {"levels": 2, "bucket": 100, "scale_dtype": "float16"},
                  "32c87855c7763c1e", "e3b0c44298fc1c14"),
    "ndqsg": ("ndqsg", {"m1": 6, "m2": 2, "alpha": 0.75, "bucket": 64}, "8cbfb27504573455", "e3b0c44298fc1c14"),
    "qsgd": ("qsgd", {"levels": 4, "bucket": 64}, "b9e0079e70c6ad22", "e3b0c44298fc1c14"),
    "identity": ("identity", {}, "e80d01f4d00f4bfe", "e3b0c44298fc1c14"),
    "fp16": ("fp16", {}, "793c3807c7537be0", "e3b0c44298fc1c14"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_codec_bytes_and_state_are_pinned(case: str) -> None:
    name, params, payload_hash, state_hash = CASES[case]
    assert pin(name, params) == (payload_hash, state_hash)


def test_ef21_codec_wire_bytes_are_pinned() -> None:
    """EF21's ``codec`` wire (a memoryless codec over the flat vector): payload and decoded vector."""
    wire = CodecWire(CODECS.build("topk", {"density": 0.1, "error_feedback": False}), INFOS)
    h = hashlib.sha256()
    for r in range(1, ROUNDS + 1):
        v = np.concatenate([u.reshape(-1) for u in update(r, 5)]).astype(np.float64)
        payload, decoded = wire.encode(v, SEED, r, 5)
        digest(h, payload)
        digest(h, {"decoded": decoded})
    assert h.hexdigest()[:16] == "608013193a7a0684"
