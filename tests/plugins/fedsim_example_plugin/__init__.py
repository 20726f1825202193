"""A third-party fedsim plugin, as a user would write one: a strategy and a codec.

Found by fedsim through the entry points declared in the dist-info beside this
package (``fedsim.strategies``: ``example-fedmedian``; ``fedsim.codecs``:
``example-sign``) or by ``"fedsim_example_plugin:SignCodec"``.
"""

from __future__ import annotations

import numpy as np
from flwr.serverapp.strategy import FedMedian

from fedsim.codecs.base import Codec, CodecContext, Field, Payload, State, TensorInfo

CALLS = {"aggregate_train": 0}


class CountingMedian(FedMedian):
    """Flower's FedMedian that counts its aggregations (so a test can see it ran)."""

    def __init__(self, tag: str = "plugin") -> None:
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1)
        self.tag = tag

    def aggregate_train(self, server_round, replies):
        CALLS["aggregate_train"] += 1
        return super().aggregate_train(server_round, replies)


class SignCodec(Codec):
    """scaled sign: x -> mean(|x|) * sign(x), one bit a coordinate (packed)."""

    name = "example-sign"

    def encode(self, x: np.ndarray, state: State, ctx: CodecContext) -> tuple[Payload, State]:
        flat = x.ravel()
        return {"bits": np.packbits(flat >= 0), "scale": np.array([np.abs(flat).mean()], np.float32)}, state

    def decode(self, payload: Payload, info: TensorInfo, ctx: CodecContext) -> np.ndarray:
        signs = np.unpackbits(payload["bits"], count=info.numel).astype(np.float32) * 2 - 1
        return (payload["scale"][0] * signs).reshape(info.shape)

    def fields(self, info: TensorInfo) -> dict[str, Field]:
        return {"bits": Field("uint8", ((info.numel + 7) // 8,)), "scale": Field("float32", (1,))}
