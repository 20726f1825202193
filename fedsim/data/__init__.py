"""Datasets and partitioners (offline only)."""


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and what is wrong."""


MAX_DATA_BYTES = 4 << 30
"""The most bytes one data array may decode to (4 GiB): a file declaring more is refused
before anything is allocated (a compressed IDX or npz "bomb" declares a huge shape)."""

from . import binary  # noqa: E402,F401  (registers mnist5k-binary, digits-binary)
