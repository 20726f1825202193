"""Test problems for the optimisation algorithms (pure numpy)."""
