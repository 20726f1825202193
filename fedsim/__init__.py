"""fedsim: a federated-learning simulator and deployment kit built on Flower."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # at run time, __getattr__ below imports them on first use
    from fedsim.api import Result as Result
    from fedsim.api import load_result as load_result
    from fedsim.api import run as run

__version__ = "0.1.0"

# ``strategies/`` and ``clients/`` install as ``fedsim.strategies`` and ``fedsim.clients``
# (setuptools package-dir). When fedsim is imported straight from a source checkout
# (the checkout first on sys.path, as ``flwr run .`` does), this finder gives the same
# mapping; in an installed fedsim the sub-packages are real and it is not registered.
_ROOT = Path(__file__).resolve().parent.parent
_MAPPED = {"fedsim.strategies": _ROOT / "strategies", "fedsim.clients": _ROOT / "clients"}


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        directory = _MAPPED.get(fullname)
        if directory is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, directory / "__init__.py", submodule_search_locations=[str(directory)])


if not (Path(__file__).parent / "clients").exists() and all((d / "__init__.py").is_file() for d in _MAPPED.values()):
    if not any(isinstance(f, _CheckoutFinder) for f in sys.meta_path):
        sys.meta_path.append(_CheckoutFinder())

_API = ("run", "Result", "load_result")


def __getattr__(name: str) -> Any:
    """``fedsim.run`` and friends, imported on first use (:mod:`fedsim.api`): ``import fedsim``
    itself imports neither torch nor Ray, as an edge install has neither."""
    if name in _API:
        from fedsim import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedsim' has no attribute {name!r}")
