"""Codecs: what a client sends instead of its dense update (see :mod:`fedsim.codecs.base`)."""

from .base import Codec, CodecContext, Field, Payload, PayloadError, State, TensorInfo, payload_nbytes, validate_payload
from .dense import Fp16, Identity
from . import sparse as _sparse, dgc as _dgc  # noqa: F401  (register topk, randk, dgc)
from . import dithered, nested, qsgd  # noqa: F401  (registers dqsg, ndqsg, qsgd)

__all__ = [
    "Codec", "CodecContext", "Field", "Fp16", "Identity", "Payload", "PayloadError", "State",
    "TensorInfo", "payload_nbytes", "validate_payload",
]
