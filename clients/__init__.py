"""Flower ClientApps and local trainers (installed as ``fedsim.clients``)."""
