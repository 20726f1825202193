"""Datasets and partitioners (offline only)."""
from . import binary  # noqa: E402,F401  (registers mnist5k-binary, digits-binary)
