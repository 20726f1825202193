"""The payload shared by DQSG, NDQSG and QSGD: packed symbols and one float per bucket.

``sym``          uint8, ``packed_nbytes(n, base)``: ``n`` symbols of ``base`` values,
                 packed by :mod:`fedsim.codecs.packing` (strictly checked on receipt);
``scale_field``  ``scale_dtype``, ``ceil(n / bucket)`` entries: a step or a norm per bucket.

The symbols only live between quantizer and packer (or unpacker and decoder), so they go
through the calling thread's scratch buffer (:func:`fedsim.codecs.kernels.scratch`).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from . import buckets, kernels
from .base import Codec, Field, Payload, PayloadError, TensorInfo
from .packing import byte_digits, check_byte_packed, pack, packed_nbytes, padded_length, unpack
from .states import EmptyState

FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)


class BucketSymbolCodec(Codec[EmptyState]):
    """Base of the codecs whose payload is packed symbols plus one float per bucket.

    Subclasses set ``base``, ``bucket`` and ``scale_dtype`` in ``__init__``, name the
    per-bucket field in ``scale_field`` and say in :meth:`check_scales` what a valid one is.
    """

    scale_field: ClassVar[str] = "scale"
    base: int
    bucket: int
    scale_dtype: str

    def symbol_scratch(self, n: int) -> np.ndarray:
        """The scratch buffer for the symbols of ``n`` entries, padded for the packer."""
        return kernels.scratch(padded_length(n, self.base))

    def pack_symbols(self, sym: np.ndarray, n: int) -> np.ndarray:
        """Pack an encoder's padded symbols (in range by construction: not re-checked)."""
        return pack(sym, self.base, n=n, check=False)

    def unpack_symbols(self, payload: Payload, info: TensorInfo) -> np.ndarray:
        """The symbols of a payload, strictly unpacked into scratch (ValueError if malformed)."""
        return unpack(payload["sym"], info.numel, self.base, out=self.symbol_scratch(info.numel))

    def scale_range(self) -> tuple[float, float]:
        """Inclusive bounds on a valid per-bucket value (subclasses: why, in their docstring)."""
        return float(np.nextafter(np.float32(0), np.float32(1))), FLOAT32_MAX

    def check_scales(self, scale: np.ndarray, where: str) -> None:
        """Every per-bucket value lies in :meth:`scale_range` (finiteness: validate_payload).

        The bounds are what makes a valid payload decode to finite float32 values.
        """
        low, high = self.scale_range()
        if scale.size:
            lo, hi = float(scale.min()), float(scale.max())
            if lo < low or hi > high:
                raise PayloadError(f"{where}: bucket {self.scale_field}s must lie in [{low:.9g}, {high:.9g}] "
                                   f"(so that the decoded values are finite float32); got [{lo:.9g}, {hi:.9g}]")

    def fields(self, info: TensorInfo) -> dict[str, Field]:
        n = info.numel
        return {
            "sym": Field("uint8", (packed_nbytes(n, self.base),)),
            self.scale_field: Field(self.scale_dtype, (buckets.n_buckets(n, self.bucket),)),
        }

    def check(self, payload: Payload, info: TensorInfo) -> None:
        self.check_scales(payload[self.scale_field], f"{info.name}.{self.scale_field}")
        try:  # strict: every block < base**k, zero padding
            if byte_digits(self.base) is not None:  # one-byte blocks: checked without unpacking
                check_byte_packed(payload["sym"], info.numel, self.base)
            else:
                self.unpack_symbols(payload, info)
        except ValueError as err:
            raise PayloadError(f"{info.name}.sym: {err}") from err

    def bits_per_coordinate(self, n: int) -> float:
        """Bits sent per coordinate for a tensor of ``n`` entries (symbols + per-bucket values)."""
        nbytes = packed_nbytes(n, self.base) + buckets.n_buckets(n, self.bucket) * np.dtype(self.scale_dtype).itemsize
        return 8.0 * nbytes / n
