"""Fuzz: random and adversarial payloads for every registered codec.

Each case starts from an honest payload (a random update encoded by the codec) and
applies a few random mutations (or replaces it by a random dict): key respellings (non-ASCII and fullwidth
digits, leading zeros, signs, case, whitespace), missing and extra keys, dtypes and byte orders, shapes,
NaN/inf, huge and tiny finite values, extreme scales, random and out-of-range packed
bytes, non-array values. The property: the server either rejects the payload with a
:class:`PayloadError` that gives a reason, or accepts it and decodes it to *finite*
values; nothing else is ever raised. ``pytest -s`` prints the counts (cases, rejected,
accepted) per codec.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsim.codecs.base import PayloadError
from fedsim.codecs.model import contexts, decode_update, encode_update, init_states, tensor_infos, validate_update
from fedsim.codecs.nested import Ndqsg
from fedsim.registry import CODECS

F32_MAX = float(np.finfo(np.float32).max)
INFOS = tensor_infos([("w", (3, 7)), ("b", (7,)), ("c", (1,))])
SEED, ROUND, CLIENT = 5, 3, 2

# every registered codec, in the formats that change the payload
CODEC_PARAMS: dict[str, list[dict]] = {
    "identity": [{}],
    "fp16": [{}],
    "topk": [{"density": 0.3}, {"density": 0.3, "values": "float16", "index_coding": "delta-varint"}],
    "randk": [{"density": 0.3}, {"density": 0.3, "seeded_indices": True}],
    "dgc": [{"density": 0.3, "warmup_rounds": 0}],
    "qsgd": [{"levels": 3, "bucket": 4}, {"levels": 1, "bucket": 4, "scale_dtype": "float16"}],
    "dqsg": [{"levels": 3, "bucket": 4}, {"levels": 1, "bucket": 5, "scale_dtype": "float16"}],
    "ndqsg": [{"m1": 3, "m2": 1, "bucket": 4}, {"m1": 8, "m2": 2, "alpha": 0.5, "bucket": 4, "estimator": "unbiased"},
              {"m1": 20, "m2": 2, "bucket": 6}],
}
CASES = [(name, p) for name, ps in CODEC_PARAMS.items() for p in ps]
COUNTS: collections.Counter[tuple[str, str]] = collections.Counter()

INDEX_SPELLINGS = ["01", "00", "+0", "-0", " 0", "0 ", "\u0660", "\u0661", "\uff10", "\uff11", "\U0001d7ce",
                   "1_0", "0x0", "1e0", "", "3", "99999999999999999999", "\u00b2"]
FIELD_SPELLINGS = ["X", "x ", "\uff58", "x\n", "", "x.y", "sym\u0000", "idx_", "VAL"]
DTYPES = ["float16", "float32", "float64", "int8", "uint8", "int32", "uint32", "int64", "bool", "complex64",
          ">f4", ">u4", ">f2"]
SPECIAL = [np.nan, np.inf, -np.inf, F32_MAX, -F32_MAX, 1e38, 3e38, 1e30, 1e-45, 1.2e-38, 0.0, -0.0, -1.0, 65504.0,
           65520.0, 1e5]


# key respellings weigh three times: they are the likeliest foreign-client mistake
MUTATIONS = ["index"] * 3 + ["field", "drop", "extra", "alias", "dtype", "shape", "value", "scale", "bytes", "object",
                             "random"]
FIELDS = ["x", "sym", "scale", "norm", "idx", "val"]
RESHAPES = {"flat": lambda a: a.reshape(-1), "2d": lambda a: a.reshape(1, -1), "cut": lambda a: a.reshape(-1)[:-1],
            "grow": lambda a: np.concatenate([a.reshape(-1), a.reshape(-1)[:1]]), "empty": lambda a: a.reshape(-1)[:0],
            "scalar": lambda a: a.reshape(-1)[0] if a.size else a}


def test_every_registered_codec_is_fuzzed():
    assert set(CODECS.names()) == set(CODEC_PARAMS)


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    total = sum(COUNTS.values())
    rejected = sum(v for (_, o), v in COUNTS.items() if o == "rejected")
    by_codec = collections.defaultdict(lambda: [0, 0])
    for (codec, outcome), v in COUNTS.items():
        by_codec[codec][outcome == "accepted"] += v
    print(f"\nfuzz payloads: {total} cases, {rejected} rejected, {total - rejected} accepted (all finite)")
    for codec, (rej, acc) in sorted(by_codec.items()):
        print(f"  {codec}: {rej + acc} cases, {rej} rejected, {acc} accepted")


def honest_update(data: st.DataObject) -> list[np.ndarray]:
    magnitude = data.draw(st.sampled_from([1e-3, 1.0, 1e4, 1e30]), label="magnitude")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    return [(rng.standard_normal(i.shape) * magnitude).astype(np.float32) for i in INFOS]


def mutate(payload: dict, data: st.DataObject) -> dict:
    """Apply one random mutation to a copy of ``payload``."""
    out = dict(payload)
    keys = sorted(out)
    kind = data.draw(st.sampled_from(MUTATIONS), label="mutation")
    if kind == "random":  # a whole random dict: plausible keys, random dtypes, shapes and bytes
        rand = {}
        for _ in range(data.draw(st.integers(0, 6))):
            index = data.draw(st.sampled_from(["0", "1", "2", *INDEX_SPELLINGS]))
            dt = np.dtype(data.draw(st.sampled_from(DTYPES)))
            size = data.draw(st.integers(0, 40))
            raw = data.draw(st.binary(min_size=size * dt.itemsize, max_size=size * dt.itemsize))
            field = data.draw(st.sampled_from(FIELDS + FIELD_SPELLINGS))
            rand[f"{index}.{field}"] = np.frombuffer(raw, dtype=dt).copy()
        return rand
    key = data.draw(st.sampled_from(keys), label="key") if keys else None
    if key is None:
        out["0.x"] = np.zeros(3, np.float32)
        return out
    index, _, field = key.partition(".")
    arr = out[key]
    if not isinstance(arr, np.ndarray):  # an earlier mutation made it a list or a number
        kind = data.draw(st.sampled_from(["index", "index", "index", "field", "drop"]))
    if kind == "index":
        out[f"{data.draw(st.sampled_from(INDEX_SPELLINGS))}.{field}"] = out.pop(key)
    elif kind == "field":
        out[f"{index}.{data.draw(st.sampled_from(FIELD_SPELLINGS))}"] = out.pop(key)
    elif kind == "drop":
        del out[key]
    elif kind == "extra":
        out[data.draw(st.sampled_from([f"{index}.extra", "3.x", f"{index}.{field}_"]))] = arr.copy()
    elif kind == "alias":  # a second spelling of the same key next to the original
        out[f"0{index}.{field}"] = arr.copy()
    elif kind == "dtype":
        dt = np.dtype(data.draw(st.sampled_from(DTYPES)))
        with np.errstate(all="ignore"):
            try:
                out[key] = arr.astype(dt)
            except (OverflowError, ValueError, TypeError):  # an object array of Python floats: -1.2 -> uint32 raises
                out[key] = np.zeros(arr.shape, dt)
    elif kind == "shape":
        out[key] = RESHAPES[data.draw(st.sampled_from(sorted(RESHAPES)))](arr)
    elif kind == "value" and arr.size:
        a = arr.copy()
        pos = data.draw(st.integers(0, a.size - 1))
        v = data.draw(st.sampled_from(SPECIAL) | st.floats(width=32, allow_nan=True, allow_infinity=True))
        with np.errstate(all="ignore"):
            if a.dtype.kind == "f":
                a.reshape(-1)[pos] = v
            elif a.dtype.kind in "iu":
                a.reshape(-1)[pos] = data.draw(st.integers(np.iinfo(a.dtype).min, np.iinfo(a.dtype).max))
        out[key] = a
    elif kind == "scale" and arr.dtype.kind == "f" and arr.size:
        v = data.draw(st.sampled_from(SPECIAL) | st.floats(width=32, min_value=0.0, allow_infinity=False,
                                                           allow_nan=False))
        with np.errstate(all="ignore"):
            out[key] = np.full_like(arr, v)
    elif kind == "bytes" and arr.dtype == np.uint8 and arr.size:
        how = data.draw(st.sampled_from(["random", "ff", "last"]))
        a = arr.copy()
        if how == "random":
            a[:] = np.frombuffer(data.draw(st.binary(min_size=a.size, max_size=a.size)), dtype=np.uint8)
        elif how == "ff":
            a[:] = 0xFF
        else:
            a[-1] = data.draw(st.integers(1, 255))
        out[key] = a
    elif kind == "object":
        out[key] = data.draw(st.sampled_from([arr.tolist(), float(arr.reshape(-1)[0]) if arr.size else 0.0,
                                              np.asarray(arr, dtype=object), None]))
    return out


def decoded(codec, payload: dict, data: st.DataObject) -> list[np.ndarray]:
    """What the server does with an accepted payload (nested: with side information)."""
    if isinstance(codec, Ndqsg):
        parts = validate_update(codec, payload, INFOS)
        scale = data.draw(st.sampled_from([1.0, 1e3, 1e30, F32_MAX / 4]), label="side-info magnitude")
        rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
        ys = [(rng.uniform(-1, 1, i.shape) * scale).astype(np.float32) for i in INFOS]
        constrain = data.draw(st.booleans())
        return [codec.decode_with_side_info(p, i, c, y, constrain=constrain)
                for p, i, c, y in zip(parts, INFOS, contexts(len(INFOS), SEED, ROUND, CLIENT), ys)]
    return decode_update(codec, payload, INFOS, SEED, ROUND, CLIENT)


@pytest.mark.parametrize(("name", "params"), CASES, ids=[f"{n}-{i}" for n, i in
                                                         ((n, CODEC_PARAMS[n].index(p)) for n, p in CASES)])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_payload_is_rejected_with_a_reason_or_decodes_finite(name, params, data):
    codec = CODECS.build(name, params)
    try:
        payload, _ = encode_update(codec, honest_update(data), INFOS, init_states(codec, INFOS), SEED, ROUND, CLIENT)
    except ValueError:  # the client refuses to send it (fp16 beyond 65504): start from zeros
        payload, _ = encode_update(codec, [np.zeros(i.shape, np.float32) for i in INFOS], INFOS,
                                   init_states(codec, INFOS), SEED, ROUND, CLIENT)
    for _ in range(data.draw(st.integers(0, 3), label="mutations")):
        payload = mutate(payload, data)
    try:
        out = decoded(codec, payload, data)
    except PayloadError as err:
        assert str(err).strip(), "a rejection must say why"
        COUNTS[name, "rejected"] += 1
        return
    assert [o.shape for o in out] == [i.shape for i in INFOS]
    assert all(o.dtype == np.float32 and np.isfinite(o).all() for o in out)
    COUNTS[name, "accepted"] += 1


@pytest.mark.parametrize(("name", "params"), CASES)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_honest_payloads_are_accepted(name, params, data):
    """No false rejection: an honest encoding of a finite update (up to 1e30) validates and decodes finite."""
    codec = CODECS.build(name, params)
    update = honest_update(data)
    if name == "fp16" or "float16" in params.values():  # the client refuses values beyond float16
        update = [np.clip(u, -1e4, 1e4) for u in update]
    if name == "qsgd":  # its float32 bucket norm overflows beyond ~1e19 (fedsim.codecs.buckets.l2norm)
        update = [np.clip(u, -1e18, 1e18) for u in update]
    payload, _ = encode_update(codec, update, INFOS, init_states(codec, INFOS), SEED, ROUND, CLIENT)
    out = decoded(codec, payload, data)
    assert all(np.isfinite(o).all() for o in out)
