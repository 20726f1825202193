"""Flower's differential-privacy strategy wrappers, registered for fedsim configs.

Central DP with server-side clipping (McMahan et al., "Learning Differentially Private
Recurrent Language Models", ICLR 2018: fixed clipping norm; Andrew et al.,
"Differentially Private Learning with Adaptive Clipping", NeurIPS 2021: the norm tracks a
quantile of the update norms). Each wraps an inner strategy named like any other::

    strategy:
      name: dp-fixed-server
      params:
        strategy: {name: fedavg}          # the inner strategy (default fedavg)
        noise_multiplier: 0.5
        clipping_norm: 1.0
        num_sampled_clients: 10           # = clients_per_round

How they meet fedsim's wrapper (:mod:`fedsim.engine.wrapper`): the wrapper decodes every
reply into ``"arrays"`` = the model sent + the decoded update, so the DP wrapper clips
the update *as the server decoded it* (after any lossy codec) and adds noise to the
aggregate. Clipping and noise therefore hold whatever the codec. What cannot work:

- **client-side clipping** (``DifferentialPrivacyClientSide*``): it relies on Flower's
  ``fixedclipping_mod`` / ``adaptiveclipping_mod`` clipping the ``"arrays"`` a client
  replies with. fedsim's ClientApp replies with an encoded payload, not arrays, so the
  mods would see nothing to clip and the guarantee would silently not hold: the names
  ``dp-fixed-client`` and ``dp-adaptive-client`` raise an error saying so;
- an inner strategy that decodes payloads itself (a :class:`fedsim.engine.view.PayloadStrategy`: EF21, nested
  dithering, MoNNA): the DP wrapper would hand it clipped arrays instead of the payloads
  it reads. That is an error too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.serverapp import strategy as fl

from fedsim.engine.view import PayloadStrategy
from fedsim.registry import STRATEGIES, PluginError

CLIENT_SIDE_WHY = (
    "Flower's client-side DP clipping needs the fixedclipping_mod/adaptiveclipping_mod on the clients, which "
    "clip the 'arrays' a client replies with; fedsim's clients reply with an encoded payload, so nothing would "
    "be clipped. Use {alt} (server-side clipping of the decoded update) instead"
)


def _number(name: str, value: Any) -> float:
    """A float parameter; YAML 1.1 reads ``1e-6`` (no sign in the exponent) as a string, so accept that too."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise PluginError(f"DP wrapper parameter {name} must be a number; got {value!r}") from None


def build_inner(strategy: Mapping[str, Any] | str) -> Any:
    """The wrapped strategy from ``{name, params}`` (or a bare name), through the registry.

    Raises PluginError for a strategy that consumes raw payloads (the DP wrapper would
    pass it arrays)."""
    spec: dict[str, Any] = {"name": strategy} if isinstance(strategy, str) else dict(strategy)
    unknown = set(spec) - {"name", "params"}
    if "name" not in spec or unknown:
        raise PluginError(f"a DP wrapper's 'strategy' is {{name: ..., params: {{...}}}}; got {dict(spec)!r}")
    inner = STRATEGIES.build(str(spec["name"]), spec.get("params") or {})
    if isinstance(inner, PayloadStrategy):
        raise PluginError(f"a DP wrapper cannot wrap {spec['name']!r}: it decodes client payloads itself, "
                          "and the DP wrapper clips and forwards decoded model arrays")
    return inner


def dp_fixed_server(noise_multiplier: float, clipping_norm: float, num_sampled_clients: int,
                    strategy: Mapping[str, Any] | str = "fedavg") -> fl.DifferentialPrivacyServerSideFixedClipping:
    """Flower's ``DifferentialPrivacyServerSideFixedClipping`` around ``strategy``.

    Every update (decoded reply minus the model sent) is scaled to L2 norm <= ``clipping_norm``;
    Gaussian noise of std ``noise_multiplier * clipping_norm / num_sampled_clients`` is added
    to the aggregate."""
    return fl.DifferentialPrivacyServerSideFixedClipping(build_inner(strategy),
                                                         _number("noise_multiplier", noise_multiplier),
                                                         _number("clipping_norm", clipping_norm), num_sampled_clients)


def dp_adaptive_server(noise_multiplier: float, num_sampled_clients: int, strategy: Mapping[str, Any] | str = "fedavg",
                       initial_clipping_norm: float = 0.1, target_clipped_quantile: float = 0.5,
                       clip_norm_lr: float = 0.2, clipped_count_stddev: float | None = None
                       ) -> fl.DifferentialPrivacyServerSideAdaptiveClipping:
    """Flower's ``DifferentialPrivacyServerSideAdaptiveClipping`` around ``strategy`` (the
    clipping norm follows the ``target_clipped_quantile`` of the update norms, Andrew et al. 2021)."""
    return fl.DifferentialPrivacyServerSideAdaptiveClipping(
        build_inner(strategy), _number("noise_multiplier", noise_multiplier), num_sampled_clients,
        _number("initial_clipping_norm", initial_clipping_norm),
        _number("target_clipped_quantile", target_clipped_quantile),
        _number("clip_norm_lr", clip_norm_lr),
        None if clipped_count_stddev is None else _number("clipped_count_stddev", clipped_count_stddev))


def _refuse(alt: str) -> Any:
    def factory(**params: Any) -> Any:
        raise PluginError(CLIENT_SIDE_WHY.format(alt=repr(alt)))

    factory.__doc__ = f"Not available in fedsim: {CLIENT_SIDE_WHY.format(alt=repr(alt))}."
    return factory


STRATEGIES.add("dp-fixed-server", dp_fixed_server)
STRATEGIES.add("dp-adaptive-server", dp_adaptive_server)
STRATEGIES.add("dp-fixed-client", _refuse("dp-fixed-server"))
STRATEGIES.add("dp-adaptive-client", _refuse("dp-adaptive-server"))
