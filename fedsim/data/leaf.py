"""LEAF's JSON datasets, FEMNIST and Shakespeare, split by client as LEAF splits them.

Caldas et al., "LEAF: A Benchmark for Federated Settings", 2018
(https://arxiv.org/abs/1812.01097, https://github.com/TalwalkarLab/leaf). LEAF's scripts
write ``train/*.json`` and ``test/*.json``; each file is one JSON object::

    {"users": ["f0000_14", ...], "num_samples": [130, ...],
     "user_data": {"f0000_14": {"x": [...], "y": [...]}, ...}}

- ``femnist``: x is 784 floats (a 28x28 image, row-major), y a class 0-61 (digits,
  upper-case, lower-case letters); one client per writer.
- ``shakespeare``: x is an 80-character string, y the next character; one client per
  speaking role. Characters map to their index in LEAF's 80-character vocabulary
  (``ALL_LETTERS``, as ``letter_to_index`` in LEAF's ``models/utils/language_utils.py``);
  a character outside it is an error (LEAF would give it index -1).

``data.path`` is the directory holding ``train/`` and ``test/`` (LEAF's ``data/femnist/data``
or ``data/shakespeare/data``). Client k is the k-th user of ``train/``, files in name
order, users in their listed order; ``data.num_clients`` may be at most the number of
users (the first ones are taken). The held-out test set is the ``test/`` data of those
users, a seeded subsample of at most ``data.params.max_test`` examples (0: all).

Files are parsed once into flat arrays kept as memory-mapped ``.npy`` files in the cache
(:mod:`.arraycache`; a changed file is parsed again), so the workers of a machine share one
copy; each client's data is a slice. A malformed or truncated file is a ValueError naming
the file (and the user).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedsim.registry import DATASETS

from .arraycache import Built, memmapped
from .datasets import NaturalDataset, natural_dataset, validate_params

ALL_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
SEQ_LEN = 80
FEMNIST_CLASSES = 62
FEMNIST_PIXELS = 28 * 28
_TEST_TAG = 0x1EAF

_LUT = np.full(128, -1, dtype=np.int64)
_LUT[[ord(c) for c in ALL_LETTERS]] = np.arange(len(ALL_LETTERS))

Converter = Callable[[list[Any], list[Any], str], tuple[np.ndarray, np.ndarray]]


class LeafParams(BaseModel):
    """``data.params`` of ``femnist`` and ``shakespeare``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_test: int = Field(10_000, ge=0, description="held-out examples kept (seeded subsample); 0: all")


def char_indices(text: str, where: str) -> np.ndarray:
    """Indices of ``text``'s characters in :data:`ALL_LETTERS`; an unknown character is an error."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.int64)
    idx = _LUT[np.minimum(codes, 127)]
    bad = np.flatnonzero((idx < 0) | (codes > 127))
    if bad.size:
        raise ValueError(f"{where}: character {text[int(bad[0])]!r} is not in LEAF's 80-character vocabulary")
    return idx


def femnist_arrays(x: list[Any], y: list[Any], where: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, 1, 28, 28) float32 images and int64 labels 0-61."""
    try:
        xa = np.asarray(x, dtype=np.float32)
        ya = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: x must be lists of {FEMNIST_PIXELS} numbers and y numbers ({err})") from None
    if xa.shape != (len(y), FEMNIST_PIXELS) or ya.ndim != 1:
        raise ValueError(f"{where}: expected x of shape ({len(y)}, {FEMNIST_PIXELS}); got {xa.shape}")
    if not np.isfinite(xa).all():
        raise ValueError(f"{where}: x must be finite")
    if ((ya != np.round(ya)) | (ya < 0) | (ya >= FEMNIST_CLASSES)).any():
        raise ValueError(f"{where}: labels must be integers 0-{FEMNIST_CLASSES - 1}")
    return xa.reshape(-1, 1, 28, 28), ya.astype(np.int64)


def shakespeare_arrays(x: list[Any], y: list[Any], where: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, 80) int64 character indices and (n,) int64 next-character indices."""
    if not all(isinstance(s, str) and len(s) == SEQ_LEN for s in x):
        raise ValueError(f"{where}: every x must be a string of {SEQ_LEN} characters")
    if not all(isinstance(s, str) and len(s) == 1 for s in y):
        raise ValueError(f"{where}: every y must be one character")
    xa = char_indices("".join(x), where).reshape(len(x), SEQ_LEN)
    return xa, char_indices("".join(y), where)


def read_leaf_file(path: Path, convert: Converter) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(user, x, y) for each user of one LEAF JSON file, in its ``users`` order."""
    try:
        doc = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"LEAF file {str(path)!r}: not valid JSON, truncated? ({err})") from None
    if not isinstance(doc, dict) or not {"users", "num_samples", "user_data"} <= set(doc):
        raise ValueError(f"LEAF file {str(path)!r}: expected an object with users, num_samples, user_data")
    users, counts, data = doc["users"], doc["num_samples"], doc["user_data"]
    if not (isinstance(users, list) and isinstance(counts, list) and isinstance(data, dict)) \
            or len(users) != len(counts):
        raise ValueError(f"LEAF file {str(path)!r}: users and num_samples must be lists of one length, "
                         "user_data an object")
    out = []
    for user, count in zip(users, counts):
        where = f"LEAF file {str(path)!r}, user {user!r}"
        record = data.get(user) if isinstance(user, str) else None
        if not isinstance(record, dict) or not isinstance(record.get("x"), list) \
                or not isinstance(record.get("y"), list):
            raise ValueError(f"{where}: no user_data entry with lists x and y")
        if not len(record["x"]) == len(record["y"]) == count:
            raise ValueError(f"{where}: num_samples says {count}, x has {len(record['x'])}, "
                             f"y has {len(record['y'])}")
        out.append((user, *convert(record["x"], record["y"], where)))
    return out


def parse_split(directory: Path, files: list[Path], convert: Converter) -> Built:
    """Flat arrays ``x``, ``y``, ``offsets`` (user i: ``offsets[i]:offsets[i+1]``) and the users."""
    rows = [row for f in files for row in read_leaf_file(f, convert)]
    users = [u for u, _, _ in rows]
    if len(set(users)) != len(users):
        raise ValueError(f"LEAF directory {str(directory)!r}: a user appears twice")
    offsets = np.concatenate([[0], np.cumsum([len(y) for _, _, y in rows])]).astype(np.int64)
    arrays = {"x": np.concatenate([x for _, x, _ in rows]), "y": np.concatenate([y for _, _, y in rows]),
              "offsets": offsets}
    return arrays, {"users": users}


class LeafSplit:
    """One of ``train/``, ``test/``: users in order, and their examples in flat arrays.

    Parsed once and kept memory-mapped (:mod:`.arraycache`): workers share one copy.
    """

    def __init__(self, directory: Path, kind: str) -> None:
        files = sorted(directory.glob("*.json"))
        if not files:
            raise FileNotFoundError(f"LEAF directory {str(directory)!r} has no .json files "
                                    "(data.path must hold LEAF's train/ and test/)")
        arrays, meta = memmapped(f"leaf-{kind}", files, kind,
                                 lambda: parse_split(directory, files, CONVERTERS[kind]))
        self.users: list[str] = meta["users"]
        self.index = {u: i for i, u in enumerate(self.users)}
        self.x, self.y, self.offsets = arrays["x"], arrays["y"], np.asarray(arrays["offsets"])
        for a in (self.x, self.y):
            if a.flags.writeable:
                a.flags.writeable = False

    def user(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.x[lo:hi], self.y[lo:hi]


@functools.lru_cache(maxsize=2)
def _split(directory: str, kind: str) -> LeafSplit:
    return LeafSplit(Path(directory), kind)


class LeafClients:
    """:class:`~fedsim.data.datasets.ClientSource`: the first ``num_clients`` users of train/."""

    def __init__(self, train: LeafSplit, num_clients: int) -> None:
        self.train, self.n = train, num_clients
        self._sizes = np.diff(train.offsets)[:num_clients]
        self._sizes.flags.writeable = False

    def sizes(self) -> np.ndarray:
        return self._sizes

    def load(self, client: int) -> tuple[np.ndarray, np.ndarray]:
        return self.train.user(int(client))


def load_leaf(kind: str, path: str | None, seed: int, num_clients: int, params: dict[str, Any]) -> NaturalDataset:
    """A LEAF dataset from ``path`` (``train/``, ``test/``) for its first ``num_clients`` users."""
    p = validate_params(LeafParams, params)
    assert isinstance(p, LeafParams)
    if not path:
        raise FileNotFoundError(f"dataset {kind!r} needs data.path: the directory holding LEAF's train/ and test/")
    root = Path(path)
    train, test = _split(str(root / "train"), kind), _split(str(root / "test"), kind)
    if num_clients > len(train.users):
        raise ValueError(f"data.num_clients={num_clients} but {str(root / 'train')!r} has "
                         f"{len(train.users)} users")
    parts = [test.user(test.index[u]) for u in train.users[:num_clients] if u in test.index]
    if not parts or not sum(len(y) for _, y in parts):
        raise ValueError(f"{str(root / 'test')!r} holds no test examples for the first {num_clients} users")
    x_test, y_test = np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])
    if p.max_test and len(y_test) > p.max_test:
        keep = np.sort(np.random.default_rng([seed, _TEST_TAG]).choice(len(y_test), p.max_test, replace=False))
        x_test, y_test = x_test[keep], y_test[keep]
    classes = FEMNIST_CLASSES if kind == "femnist" else len(ALL_LETTERS)
    return NaturalDataset(x_test, y_test, classes, LeafClients(train, num_clients))


CONVERTERS: dict[str, Converter] = {"femnist": femnist_arrays, "shakespeare": shakespeare_arrays}


@DATASETS.register("femnist")
@natural_dataset(LeafParams)
def femnist(path: str | None = None, seed: int = 0, num_clients: int = 1, **params: Any) -> NaturalDataset:
    """LEAF's FEMNIST: one client per writer, 62 classes, 28x28 images."""
    return load_leaf("femnist", path, seed, num_clients, params)


@DATASETS.register("shakespeare")
@natural_dataset(LeafParams)
def shakespeare(path: str | None = None, seed: int = 0, num_clients: int = 1, **params: Any) -> NaturalDataset:
    """LEAF's Shakespeare: one client per speaking role, next character of 80."""
    return load_leaf("shakespeare", path, seed, num_clients, params)
