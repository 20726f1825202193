"""Attacks and faults: what a Byzantine or broken client sends instead of its update.

Two kinds (see :mod:`fedsim.attacks.base`):

- :class:`ClientAttack` runs on the client and replaces its update before encoding
  (sign flip of its own update, Gaussian noise, NaN faults, label flipping in its data);
- :class:`ServerAttack` is omniscient: it needs the honest vectors of the round, which
  only the server side of a simulation sees, so the simulator applies it there, after
  decoding and before aggregation.
"""

from . import byzantine as _byzantine  # noqa: F401  (registers the Byzantine attacks)
from . import faults as _faults  # noqa: F401  (registers the built-in faults)
from .base import ClientAttack, ServerAttack, attacker_ids

__all__ = ["ClientAttack", "ServerAttack", "attacker_ids"]
from . import searched as _searched  # noqa: E402,F401  (registers "line_search")
