"""Synthetic(alpha, beta): FedProx's heterogeneous logistic-regression data, any number of clients.

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in Heterogeneous
Networks", MLSys 2020, section 5.1 and appendix C.1 (https://arxiv.org/abs/1812.06127).

Per client k (60 features, 10 classes)::

    u_k ~ N(0, alpha),  B_k ~ N(0, beta)
    W_k[c, j], b_k[c] ~ N(u_k, 1)         (model heterogeneity: alpha)
    v_k[j] ~ N(B_k, 1)                     (feature heterogeneity: beta)
    x ~ N(v_k, Sigma),  Sigma = diag(j^-1.2), j = 1..60
    y = argmax softmax(W_k x + b_k) = argmax (W_k x + b_k)

As in FedProx's generator (``generate_synthetic``), the second argument of ``N(., .)`` is a
standard deviation. ``iid=True`` is FedProx's Synthetic-IID: one W, b for every client and
v_k = 0.

Client sizes follow FedProx's power law: ``floor(lognormal(size_mu, size_sigma)) + min_size``
(defaults 4, 2 and 50, as the generator), clipped at ``max_size`` (default 10,000: without a
cap a draw of 100,000 clients holds some of over 100,000 examples; the cap moves about 0.5%
of the clients at the defaults). All sizes come from one vectorised draw seeded by
``(seed, "sizes")``.

Nothing is materialised: client k's parameters and examples are drawn from their own
generator seeded by ``(seed, k)``, so any process, in any order, gets the same bytes, and
the last few clients are cached per process. The held-out test set draws ``test_examples``
fresh examples spread evenly over ``test_clients`` clients picked by ``(seed, "test")``
(every client when there are fewer), from streams disjoint from the training ones.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedsim.registry import DATASETS

from .datasets import NaturalDataset, natural_dataset, validate_params

NUM_FEATURES = 60
NUM_CLASSES = 10
# Stream tags: the generators of the sizes, the clients' training data, the test set
# and Synthetic-IID's shared model never overlap.
_SIZES, _CLIENT, _TEST, _SHARED = 0x5123, 0x5C11, 0x7E57, 0x5A4E
CACHED_CLIENTS = 8


class SyntheticParams(BaseModel):
    """``data.params`` of ``synthetic`` (validated; an unknown key is an error)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha: float = Field(1.0, ge=0, description="std of u_k: how much the clients' models differ")
    beta: float = Field(1.0, ge=0, description="std of B_k: how much the clients' features differ")
    iid: bool = Field(False, description="FedProx's Synthetic-IID: one model, one feature mean")
    size_mu: float = Field(4.0, description="mean of the log of a client's size")
    size_sigma: float = Field(2.0, ge=0, description="std of the log of a client's size")
    min_size: int = Field(50, ge=1, description="added to every size: the smallest client")
    max_size: int = Field(10_000, ge=1, description="sizes are clipped here")
    test_clients: int = Field(1_000, ge=1, description="clients the held-out test set is drawn from")
    test_examples: int = Field(5_000, ge=1, description="size of the held-out test set (about)")

    @model_validator(mode="after")
    def _check(self) -> SyntheticParams:
        if self.max_size < self.min_size:
            raise ValueError(f"max_size ({self.max_size}) must be >= min_size ({self.min_size})")
        return self


def feature_std() -> np.ndarray:
    """sqrt(diag Sigma): Sigma_jj = j^-1.2, j = 1..60 (FedProx, appendix C.1)."""
    return np.arange(1, NUM_FEATURES + 1, dtype=np.float64) ** -0.6


def client_sizes(num_clients: int, seed: int, p: SyntheticParams) -> np.ndarray:
    """Every client's number of training examples: one vectorised lognormal draw, int64."""
    rng = np.random.default_rng([seed, _SIZES])
    raw = np.minimum(rng.lognormal(p.size_mu, p.size_sigma, num_clients), float(p.max_size))
    return np.minimum(raw.astype(np.int64) + p.min_size, p.max_size)


class ClientModel(NamedTuple):
    """A client's distribution: labels argmax(W x + b), features mean v."""

    w: np.ndarray  # (10, 60)
    b: np.ndarray  # (10,)
    v: np.ndarray  # (60,)


def draw_client_model(rng: np.random.Generator, p: SyntheticParams, seed: int) -> ClientModel:
    """Draw (W_k, b_k, v_k) as in FedProx's generator (the first draws of a client's stream)."""
    if p.iid:
        shared = np.random.default_rng([seed, _SHARED])
        w = shared.normal(0.0, 1.0, (NUM_CLASSES, NUM_FEATURES))
        b = shared.normal(0.0, 1.0, NUM_CLASSES)
        return ClientModel(w, b, np.zeros(NUM_FEATURES))
    u, big_b = rng.normal(0.0, p.alpha), rng.normal(0.0, p.beta)  # u_k ~ N(0, alpha), B_k ~ N(0, beta)
    w = rng.normal(u, 1.0, (NUM_CLASSES, NUM_FEATURES))  # W_k ~ N(u_k, 1)
    b = rng.normal(u, 1.0, NUM_CLASSES)  # b_k ~ N(u_k, 1)
    v = rng.normal(big_b, 1.0, NUM_FEATURES)  # v_k ~ N(B_k, 1)
    return ClientModel(w, b, v)


def draw_examples(model: ClientModel, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n examples: x ~ N(v_k, Sigma) (Sigma diagonal), y = argmax(W_k x + b_k)."""
    x = model.v + rng.standard_normal((n, NUM_FEATURES)) * feature_std()
    y = np.argmax(x @ model.w.T + model.b, axis=1)  # softmax is monotone: argmax of the logits
    return x.astype(np.float32), y.astype(np.int64)


@functools.lru_cache(maxsize=CACHED_CLIENTS)
def client_data(seed: int, client: int, n: int, p: SyntheticParams) -> tuple[np.ndarray, np.ndarray]:
    """Client ``client``'s ``n`` training examples, from the stream ``(seed, client)`` alone."""
    rng = np.random.default_rng([seed, _CLIENT, client])
    x, y = draw_examples(draw_client_model(rng, p, seed), n, rng)
    x.flags.writeable = False  # cached: shared by every caller in this process
    y.flags.writeable = False
    return x, y


def test_set(num_clients: int, seed: int, p: SyntheticParams) -> tuple[np.ndarray, np.ndarray]:
    """About ``test_examples`` held-out examples, evenly from ``test_clients`` seeded clients.

    A test client's model is its training model (same first draws of ``(seed, client)``);
    its test examples come from the separate stream ``(seed, "test", client)``.
    """
    rng = np.random.default_rng([seed, _TEST])
    t = min(num_clients, p.test_clients)
    chosen = np.sort(rng.choice(num_clients, t, replace=False)) if t < num_clients else np.arange(num_clients)
    per = max(1, -(-p.test_examples // t))
    xs, ys = [], []
    for k in chosen.tolist():
        model = draw_client_model(np.random.default_rng([seed, _CLIENT, k]), p, seed)
        x, y = draw_examples(model, per, np.random.default_rng([seed, _TEST, k]))
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


class SyntheticClients:
    """:class:`~fedsim.data.datasets.ClientSource` of Synthetic: sizes drawn once, data on demand."""

    def __init__(self, num_clients: int, seed: int, p: SyntheticParams) -> None:
        self.seed, self.p = seed, p
        self._sizes = client_sizes(num_clients, seed, p)
        self._sizes.flags.writeable = False

    def sizes(self) -> np.ndarray:
        return self._sizes

    def load(self, client: int) -> tuple[np.ndarray, np.ndarray]:
        return client_data(self.seed, int(client), int(self._sizes[client]), self.p)


@DATASETS.register("synthetic")
@natural_dataset(SyntheticParams)
def synthetic(path: str | None = None, seed: int = 0, num_clients: int = 30, **params: object) -> NaturalDataset:
    """FedProx's Synthetic(alpha, beta) for ``num_clients`` clients (``data.params``: SyntheticParams)."""
    p = validate_params(SyntheticParams, params)
    assert isinstance(p, SyntheticParams)
    x_test, y_test = test_set(num_clients, seed, p)
    return NaturalDataset(x_test, y_test, NUM_CLASSES, SyntheticClients(num_clients, seed, p))
