"""Codecs: what a client sends instead of its dense update (see :mod:`fedsim.codecs.base`)."""

from . import dgc, dithered, nested, qsgd, sparse  # noqa: F401  (register dgc, dqsg, ndqsg, qsgd, topk, randk)
from .base import (
    Codec,
    CodecContext,
    EmptyState,
    Field,
    Payload,
    PayloadError,
    State,
    TensorInfo,
    payload_nbytes,
    validate_payload,
)
from .dense import Fp16, Identity

__all__ = [
    "Codec", "CodecContext", "EmptyState", "Field", "Fp16", "Identity", "Payload", "PayloadError", "State",
    "TensorInfo", "payload_nbytes", "validate_payload",
]
