"""Partitioners: how a training set is split over clients. All are seeded.

- ``iid``: a random permutation cut into near-equal parts.
- ``dirichlet``: per class, the class's examples are split over clients in proportions
  drawn from Dir(alpha) (Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data
  Distribution for Federated Visual Classification", 2019); small alpha = strong label
  skew. Draws are repeated until every client has ``min_size`` examples.
- ``shards``: sort by label, cut into ``num_clients * shards_per_client`` shards, give
  each client ``shards_per_client`` of them (McMahan et al., AISTATS 2017).

A split that cannot be made (fewer examples than ``num_clients * min_size``, more shards
than examples, no Dirichlet draw giving everyone ``min_size``) is a ValueError naming
num_clients, min_size and the number of examples.
"""

from __future__ import annotations

import numpy as np

MAX_DIRICHLET_TRIES = 100


def iid(num_examples: int, num_clients: int, rng: np.random.Generator, min_size: int = 1) -> list[np.ndarray]:
    if num_examples // num_clients < min_size:
        raise ValueError(f"iid: {num_examples} examples cannot give data.num_clients={num_clients} clients "
                         f"data.partition.min_size={min_size} each")
    perm = rng.permutation(num_examples)
    return [np.sort(part) for part in np.array_split(perm, num_clients)]


def dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator, min_size: int = 1
) -> list[np.ndarray]:
    if min_size * num_clients > len(labels):
        raise ValueError(
            f"dirichlet: {len(labels)} examples cannot give data.num_clients={num_clients} clients "
            f"data.partition.min_size={min_size} each"
        )
    classes = np.unique(labels)
    for _ in range(MAX_DIRICHLET_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            p = rng.dirichlet(np.full(num_clients, alpha))
            # cut points: cumulative proportions of the class's examples
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(o) for o in out) >= min_size:
            return out
    raise ValueError(
        f"dirichlet(alpha={alpha}): in {MAX_DIRICHLET_TRIES} draws no split of {len(labels)} examples gave "
        f"every one of data.num_clients={num_clients} clients data.partition.min_size={min_size} examples; "
        "raise data.partition.alpha, lower data.partition.min_size or data.num_clients, or use a larger dataset"
    )


def shards(
    labels: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    n_shards = num_clients * shards_per_client
    if n_shards > len(labels):
        raise ValueError(f"shards: data.num_clients={num_clients} x data.partition.shards_per_client="
                         f"{shards_per_client} = {n_shards} shards cannot be cut from {len(labels)} examples")
    order = np.argsort(labels, kind="stable")
    pieces = np.array_split(order, n_shards)
    assign = rng.permutation(n_shards).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([pieces[s] for s in row])) for row in assign]


def partition(labels: np.ndarray, num_clients: int, kind: str, rng: np.random.Generator, *,
              alpha: float = 0.5, shards_per_client: int = 2, min_size: int = 1) -> list[np.ndarray]:
    """Split indices ``0..len(labels)-1`` over ``num_clients`` by ``kind``."""
    if kind == "iid":
        return iid(len(labels), num_clients, rng, min_size)
    if kind == "dirichlet":
        return dirichlet(labels, num_clients, alpha, rng, min_size)
    if kind == "shards":
        return shards(labels, num_clients, shards_per_client, rng)
    if kind == "natural":
        raise ValueError("partition kind 'natural' splits nothing: the dataset comes split by client")
    raise ValueError(f"unknown partition kind {kind!r}; known: iid, dirichlet, shards")
