"""Codecs: what a client sends instead of its dense update (see :mod:`fedsim.codecs.base`)."""

from . import dgc as _dgc
from . import dithered, nested, qsgd  # noqa: F401  (registers dqsg, ndqsg, qsgd)
from . import sparse as _sparse  # noqa: F401  (register topk, randk, dgc)
from .base import Codec, CodecContext, Field, Payload, PayloadError, State, TensorInfo, payload_nbytes, validate_payload
from .dense import Fp16, Identity

__all__ = [
    "Codec", "CodecContext", "Field", "Fp16", "Identity", "Payload", "PayloadError", "State",
    "TensorInfo", "payload_nbytes", "validate_payload",
]
