"""Dense codecs: ``identity`` (float32) and ``fp16`` (half precision).

``identity`` is the reference every compressing codec is measured against; ``fp16``
halves the bytes with a relative rounding error of at most 2**-11 for values in
half precision's normal range (|x| in [6.1e-5, 65504]).
"""

from __future__ import annotations

import numpy as np

from fedsim.registry import CODECS

from .base import Codec, CodecContext, Field, Payload, PayloadError, TensorInfo
from .states import EmptyState

FP16_MAX = float(np.finfo(np.float16).max)


@CODECS.register("identity")
class Identity(Codec[EmptyState]):
    """Send the tensor as float32: no compression."""

    name = "identity"

    def encode(self, x: np.ndarray, state: EmptyState, ctx: CodecContext) -> tuple[Payload, EmptyState]:
        return {"x": np.ascontiguousarray(x, dtype=np.float32)}, state

    def decode(self, payload: Payload, info: TensorInfo, ctx: CodecContext) -> np.ndarray:
        return payload["x"].astype(np.float32, copy=True)

    def fields(self, info: TensorInfo) -> dict[str, Field]:
        return {"x": Field("float32", info.shape)}


@CODECS.register("fp16")
class Fp16(Codec[EmptyState]):
    """Send the tensor as IEEE half precision (2 bytes a coordinate).

    Values beyond float16's range would become inf; the encoder refuses them
    rather than send a payload the server must reject.
    """

    name = "fp16"

    def encode(self, x: np.ndarray, state: EmptyState, ctx: CodecContext) -> tuple[Payload, EmptyState]:
        with np.errstate(over="ignore"):  # overflow is detected just below, with a reason
            h = np.ascontiguousarray(x, dtype=np.float16)
        if np.isinf(h).any() and (np.isinf(h) & np.isfinite(x)).any():  # overflowed in the cast
            raise PayloadError(f"fp16: |x| exceeds {FP16_MAX}, the float16 range")
        return {"x": h}, state

    def decode(self, payload: Payload, info: TensorInfo, ctx: CodecContext) -> np.ndarray:
        return payload["x"].astype(np.float32)

    def fields(self, info: TensorInfo) -> dict[str, Field]:
        return {"x": Field("float16", info.shape)}
