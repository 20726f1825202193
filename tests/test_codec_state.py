"""Typed codec state <-> stored arrays (fedsim.codecs.states), the client's codec-state cycle
(fedsim.codecs.cycle) and a codec's constructor parameters (Codec.params)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedsim.codecs.base import Codec, CodecContext, EmptyState, Field, Payload, PayloadError, TensorInfo
from fedsim.codecs.cycle import encode_round, restore_states, saved_arrays
from fedsim.codecs.dgc import DGCState, dgc
from fedsim.codecs.dithered import Dqsg
from fedsim.codecs.model import init_states, tensor_infos
from fedsim.codecs.nested import Ndqsg
from fedsim.codecs.qsgd import Qsgd
from fedsim.codecs.sparse import ErrorFeedback, ErrorFeedbackState, topk
from fedsim.codecs.states import restore_state, state_arrays
from fedsim.registry import CODECS

INFOS = tensor_infos([("w", (3, 4)), ("b", (3,))])


def arange(shape: tuple[int, ...], start: float = 0.0) -> np.ndarray:
    return (np.arange(int(np.prod(shape)), dtype=np.float32) + np.float32(start)).reshape(shape)


def test_state_arrays_keys_are_the_stored_keys() -> None:
    """Fields by name, nested states as "<field>.<key>", in field order; an empty state has none."""
    u, v, e = arange((2,)), arange((2,), 10), arange((2,), 20)
    assert list(state_arrays(DGCState(u, v))) == ["u", "v"]
    nested = state_arrays(ErrorFeedbackState(e, DGCState(u, v)))
    assert list(nested) == ["e", "inner.u", "inner.v"]
    assert nested["e"] is e and nested["inner.v"] is v
    assert state_arrays(ErrorFeedbackState(e, EmptyState())) == {"e": e}
    assert state_arrays(EmptyState()) == {}
    assert state_arrays({"n": u}) == {"n": u}  # a plugin's dict state is stored as it is
    with pytest.raises(TypeError, match="NamedTuple"):
        state_arrays([u, v])


def test_restore_is_the_inverse_and_ignores_other_keys() -> None:
    template = ErrorFeedbackState(np.zeros(2, np.float32), DGCState(np.zeros(2, np.float32), np.zeros(2, np.float32)))
    state = ErrorFeedbackState(arange((2,), 20), DGCState(arange((2,)), arange((2,), 10)))
    stored = {**state_arrays(state), "inner.extra": arange((5,))}
    back = restore_state(template, stored)
    assert type(back) is ErrorFeedbackState and type(back.inner) is DGCState
    assert back.e is stored["e"] and back.inner.u is stored["inner.u"] and back.inner.v is stored["inner.v"]
    assert restore_state(EmptyState(), stored) == EmptyState()
    assert restore_state({"n": np.zeros(1)}, stored) == stored  # a plugin's dict: every array back


@pytest.mark.parametrize("stored, reason", [
    ({"u": np.zeros(2, np.float32)}, "no '0.v'"),
    ({"u": np.zeros(2, np.float32), "v": np.zeros(3, np.float32)}, "'0.v' is float32 of shape \\(3,\\)"),
    ({"u": np.zeros(2, np.float64), "v": np.zeros(2, np.float32)}, "'0.u' is float64"),
])
def test_restore_says_which_key_does_not_fit(stored: dict[str, np.ndarray], reason: str) -> None:
    template = DGCState(np.zeros(2, np.float32), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match=reason):
        restore_state(template, stored, "0.")


def test_cycle_restores_what_it_saved_and_matches_an_unbroken_run() -> None:
    """Two rounds through the stored arrays equal two rounds kept in memory, bit for bit."""
    codec = ErrorFeedback(dgc(0.25, warmup_rounds=0, sample_ratio=1.0))
    updates = [[arange(i.shape, r) * np.float32(0.1 * (-1) ** r) for i in INFOS] for r in (1, 2)]
    saved: dict[str, np.ndarray] = {}
    for r, update in zip((1, 2), updates):
        payload, saved = encode_round(codec, update, INFOS, saved, 5, r, 1)
    assert list(saved) == ["0.e", "0.inner.u", "0.inner.v", "1.e", "1.inner.u", "1.inner.v"]
    states = init_states(codec, INFOS)
    for r, update in zip((1, 2), updates):
        ref_payload = {}
        for t, x in enumerate(update):
            p, states[t] = codec.encode(x, states[t], CodecContext(5, r, 1, t))
            ref_payload.update({f"{t}.{k}": a for k, a in p.items()})
    assert payload.keys() == ref_payload.keys()
    assert all(np.array_equal(payload[k], ref_payload[k]) for k in payload)
    assert all(np.array_equal(a, b) for a, b in zip(saved.values(), saved_arrays(states).values()))


def test_cycle_starts_fresh_and_rejects_state_of_another_model() -> None:
    codec = topk(0.5)
    fresh = restore_states(codec, INFOS, {})
    assert all(isinstance(s, ErrorFeedbackState) and not s.e.any() for s in fresh)
    with pytest.raises(ValueError, match="'1.e'"):
        restore_states(codec, INFOS, {"0.e": np.zeros((3, 4), np.float32)})
    with pytest.raises(PayloadError, match="unexpected payload key '7.e'"):
        restore_states(codec, INFOS, {"7.e": np.zeros(3, np.float32)})
    assert saved_arrays(restore_states(topk(0.5, error_feedback=False), INFOS, {})) == {}


class Counter(Codec[dict]):
    """A plugin's codec with an untyped dict state: the count of rounds encoded."""

    def init(self, info: TensorInfo) -> dict:
        return {"n": np.zeros(1, np.int64)}

    def encode(self, x: np.ndarray, state: dict, ctx: CodecContext) -> tuple[Payload, dict]:
        return {"x": x}, {"n": state["n"] + 1}

    def decode(self, payload: Payload, info: TensorInfo, ctx: CodecContext) -> np.ndarray:
        return payload["x"]

    def fields(self, info: TensorInfo) -> dict[str, Field]:
        return {"x": Field("float32", info.shape)}


def test_cycle_keeps_a_plugins_dict_state() -> None:
    saved: dict[str, np.ndarray] = {}
    for r in (1, 2, 3):
        _, saved = encode_round(Counter(), [arange(i.shape) for i in INFOS], INFOS, saved, 0, r, 0)
    assert {k: int(a[0]) for k, a in saved.items()} == {"0.n": 3, "1.n": 3}


@pytest.mark.parametrize("codec", [Dqsg(2, 64, "float16"), Ndqsg(6, 2, 0.5, 128, "float32", "unbiased"),
                                   Qsgd(5, 256)])
def test_params_rebuild_the_codec(codec: Codec) -> None:
    """params() lists every constructor parameter, JSON-ready: the strategy sends it to clients."""
    params = json.loads(json.dumps(codec.params()))
    rebuilt = CODECS.build(codec.name, params)
    assert type(rebuilt) is type(codec) and rebuilt.params() == codec.params()
    assert vars(rebuilt) == vars(codec)


def test_params_of_ndqsg_hand_listed() -> None:
    assert Ndqsg(6, 2, 0.5, 128, "float16", "unbiased").params() == {
        "m1": 6, "m2": 2, "alpha": 0.5, "bucket": 128, "scale_dtype": "float16", "estimator": "unbiased"}


def test_params_says_which_parameter_is_not_kept() -> None:
    class Forgetful(Counter):
        def __init__(self, levels: int = 3) -> None:
            self.lvl = levels

    with pytest.raises(TypeError, match="no attribute 'levels'"):
        Forgetful().params()
