"""The plugin registry: strategies, codecs, attacks, datasets, models, device profiles.

A plugin is found, in this order, by

1. a name registered in code (``@STRATEGIES.register("ef21w")``),
2. an entry point in the group ``fedsim.<kind>s`` of any installed package
   (``[project.entry-points."fedsim.strategies"] mine = "pkg.mod:MyStrategy"``),
3. a ``"module:attr"`` reference (``"my_pkg.strategies:Mine"``).

An unknown reference is a :class:`PluginError` whose message lists what is known.
Built-in plugins register themselves when their module is imported; each registry
imports its built-in modules lazily, on first lookup, so that importing fedsim on an
edge device never drags in torch or Ray.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class PluginError(ValueError):
    """A plugin reference or its parameters could not be resolved."""


class Registry(Generic[T]):
    """Name -> factory lookup for one kind of plugin.

    Parameters
    ----------
    kind : str
        Singular noun used in messages ("strategy", "codec").
    group : str
        Entry-point group searched for third-party plugins.
    builtins : tuple of str
        Modules imported on first lookup; importing them registers the built-ins.
    """

    def __init__(self, kind: str, group: str, builtins: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.group = group
        self._builtins = builtins
        self._loaded = False
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``."""

        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name``; a second, different object is an error."""
        if name in self._items and self._items[name] is not obj:
            raise PluginError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj

    def _load_builtins(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._builtins:
                importlib.import_module(module)

    def _entry_points(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        """Registered and entry-point names, sorted."""
        self._load_builtins()
        return sorted(set(self._items) | set(self._entry_points()))

    def get(self, ref: str) -> T:
        """Resolve a registered name, an entry-point name or ``"module:attr"``."""
        self._load_builtins()
        if ref in self._items:
            return self._items[ref]
        eps = self._entry_points()
        if ref in eps:
            return eps[ref].load()
        if ":" in ref:
            module_name, _, attr = ref.partition(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError as err:
                raise PluginError(
                    f"{self.kind} {ref!r}: cannot import module {module_name!r} ({err})"
                ) from err
            obj: Any = module  # the attribute named: any object, until the caller checks its kind
            for part in attr.split("."):
                if not hasattr(obj, part):
                    raise PluginError(
                        f"{self.kind} {ref!r}: module {module_name!r} has no attribute {attr!r}"
                    )
                obj = getattr(obj, part)
            return obj
        raise PluginError(
            f"unknown {self.kind} {ref!r}; known: {', '.join(self.names())}"
            " (or 'module:attr', or an entry point in group " + repr(self.group) + ")"
        )

    def build(self, ref: str, params: Mapping[str, Any] | None = None, **fixed: Any) -> Any:
        """Resolve ``ref`` and call it with ``params`` (checked against its signature).

        ``fixed`` are arguments that fedsim itself supplies; ``params`` come from the
        user's config and may not name a parameter the factory does not take.
        """
        factory: Any = self.get(ref)
        params = dict(params or {})
        check_params(f"{self.kind} {ref!r}", getattr(factory, "params_target", factory), params)
        return factory(**fixed, **params)


def check_params(what: str, factory: Callable[..., Any], params: Mapping[str, Any]) -> None:
    """Raise :class:`PluginError` if ``params`` names an argument ``factory`` lacks."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    allowed = [
        n
        for n, p in sig.parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"
    ]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise PluginError(
            f"{what}: unknown parameter {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(allowed) or '(none)'}"
        )


STRATEGIES: Registry[Any] = Registry("strategy", "fedsim.strategies", ("fedsim.strategies",))
CODECS: Registry[Any] = Registry("codec", "fedsim.codecs", ("fedsim.codecs",))
ATTACKS: Registry[Any] = Registry("attack", "fedsim.attacks", ("fedsim.attacks",))
DATASETS: Registry[Any] = Registry("dataset", "fedsim.datasets", ("fedsim.data.datasets",))
MODELS: Registry[Any] = Registry("model", "fedsim.models", ("fedsim.models",))
PROFILES: Registry[Any] = Registry("device profile", "fedsim.profiles", ("fedsim.network.profiles",))
