"""Flower server strategies (installed as ``fedsim.strategies``)."""
