"""The ``line_search`` attack: ALIE / FOE / IPM with the factor that hurts a named rule most.

The MoNNA paper (Farhadkhani et al., ICML 2023, Section 5) sets the factor of ALIE and FOE
each step by a line search against the defence. The rule searched against is named in the
config (``against``), because attacks are built before the strategy is known:

==========================  ============================================================
``against``                 the rule (what the attacked strategy does with the vectors)
==========================  ============================================================
``nna``                     MoNNA / NNA mixing (:func:`fedsim.robust.nna.nna_aggregator`)
``mean``                    FedAvg (equal weights)
``trimmed_mean``, ...       :func:`fedsim.robust.aggregators.get_aggregator` names,
``nnm+trimmed_mean``        including NNM in front (``"nnm+<name>"``)
==========================  ============================================================

Config::

    attack: {name: line_search, count: 5, params: {attack: alie, against: nna}}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fedsim.registry import ATTACKS

from .base import ServerAttack
from .byzantine import ALIE, FOE, IPM
from .line_search import Aggregate, LineSearchAttack

# Candidate factors: ALIE's c (std units), FOE's c in (1 - c) * mean, IPM's eps.
DEFAULT_CANDIDATES: dict[str, tuple[float, ...]] = {
    "alie": (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0),
    "foe": (-8.0, -4.0, -2.0, -1.0, -0.5, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 9.0),
    "ipm": (0.1, 0.5, 1.0, 2.0, 4.0, 8.0),
}
FACTORIES: dict[str, Callable[[float], ServerAttack]] = {
    "alie": lambda c: ALIE(c=c), "foe": lambda c: FOE(c=c), "ipm": lambda e: IPM(eps=e),
}


def rule_named(against: str, rule: str = "reference", seed: int = 0) -> Aggregate:
    """The ``(vectors, f) -> aggregate`` function that ``against`` names."""
    from fedsim.robust.aggregators import get_aggregator
    from fedsim.robust.nna import check_rule, nna_aggregator

    if against == "nna":
        return nna_aggregator(rule=check_rule(rule), seed=seed)
    return get_aggregator(against)


@ATTACKS.register("line_search")
def line_search_attack(attack: str, against: str, candidates: Sequence[float] | None = None,
                       rule: str = "reference", reduce: str = "mean") -> LineSearchAttack:
    """ALIE, FOE or IPM re-tuned every round against the rule ``against``.

    Parameters
    ----------
    attack : {"alie", "foe", "ipm"}
    against : str
        ``"nna"`` or an aggregator name (module docstring).
    candidates : sequence of float, optional
        Factors tried each round; default :data:`DEFAULT_CANDIDATES` of ``attack``.
    rule : {"reference", "byzfl"}
        The NNA rule, when ``against="nna"``.
    reduce : {"mean", "max"}
        How the harm of per-client outputs (NNA) is summarised.
    """
    if attack not in FACTORIES:
        raise ValueError(f"line search supports attacks {', '.join(FACTORIES)}; got {attack!r}")
    cands = DEFAULT_CANDIDATES[attack] if candidates is None else tuple(candidates)
    return LineSearchAttack(FACTORIES[attack], rule_named(against, rule), cands, reduce=reduce)
