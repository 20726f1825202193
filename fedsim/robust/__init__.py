"""Robust mixing and aggregation: NNA (MoNNA's mixing step), NNM and classic robust rules.

Pure numpy functions on an ``(n, d)`` array of flattened client vectors; the Flower
strategies call them after decoding the replies of a round.
"""

from .aggregators import (
    AGGREGATORS,
    Aggregator,
    coordinate_median,
    get_aggregator,
    krum,
    krum_scores,
    mean,
    multi_krum,
    nnm,
    trimmed_mean,
    with_nnm,
)
from .nna import (
    RULES,
    Rule,
    check_honest_majority,
    kept_count,
    nna,
    nna_aggregator,
    nna_mix,
    nna_weights,
    pairwise_sq_distances,
    received_count,
    received_sets,
)

__all__ = [
    "AGGREGATORS", "Aggregator", "RULES", "Rule", "check_honest_majority", "coordinate_median",
    "get_aggregator", "kept_count", "krum", "krum_scores", "mean", "multi_krum", "nna", "nna_aggregator", "nna_mix",
    "nna_weights", "nnm", "pairwise_sq_distances", "received_count", "received_sets",
    "trimmed_mean", "with_nnm",
]
