"""fedsim: a federated-learning simulator and deployment kit built on Flower."""

__version__ = "0.1.0"
