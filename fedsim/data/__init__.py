"""Datasets and partitioners (offline only)."""
