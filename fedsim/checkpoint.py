"""Checkpoints: what the next round needs, saved atomically, so a killed run resumes.

After every ``checkpoint.every`` rounds (and the last) the server loop saves, under
``RUN_DIR/checkpoint/round-<k>/``:

- ``model.npz``: the global model (the arrays the next round sends);
- ``strategy.npz`` + ``strategy.json``: the strategy's state, captured generically by
  :func:`object_state` (server momentum, Adam moments, per-client models, EF21's g_i, ...);
- ``clients/client-<id>.npz``: every client's persistent state (error-feedback memory,
  momentum), through the grid's ``save_client_states`` hook;
- ``state.json``: the round, the metrics rows so far, the network model's clock, and
  whether client state was saved.

``checkpoint/latest.json`` names the newest complete checkpoint; it is replaced (write,
fsync, rename) only after that checkpoint's files are all written, so a run killed at
any instant leaves the previous complete checkpoint in force. Older checkpoints are then
removed. Nothing is pickled: arrays are ``.npz`` read with ``allow_pickle=False``, the
rest JSON. All randomness in fedsim derives from (seed, round, client), so these plus
the config are everything a resumed run needs to give the same models and metrics.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from fedsim.runstatus import write_json_atomic
from fedsim.wire import to_record

CHECKPOINT_DIR = "checkpoint"
LATEST = "latest.json"
FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or resumed; the message says why."""


# --------------------------------------------------------------------------- generic state


class _Unsupported(TypeError):
    pass


def _is_config(value: Any) -> bool:
    """Values that are configuration, rebuilt from the config, not state: callables, classes,
    modules and pydantic models (fedsim's validated config sections)."""
    import types

    from pydantic import BaseModel

    return callable(value) or isinstance(value, (type, types.ModuleType, BaseModel))


def _record_type(value: Any) -> type | None:
    """A NamedTuple or dataclass type of fedsim's own (rebuilt by name, fields only)."""
    t = type(value)
    if not (t.__module__ or "").startswith("fedsim."):
        return None
    if (isinstance(value, tuple) and hasattr(t, "_fields")) or (dataclasses.is_dataclass(value)):
        return t
    return None


def _encode(value: Any, arrays: dict[str, np.ndarray], plain: bool = False) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value if not isinstance(value, float) else {"f": repr(value)}
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise _Unsupported("an object array")
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {"a": key}
    if isinstance(value, np.generic):
        return {"s": _encode(np.asarray(value), arrays)}
    if isinstance(value, np.dtype):
        return {"dt": value.str}
    if isinstance(value, ArrayRecord):
        return {"ar": [[k, _encode(a.numpy(), arrays)] for k, a in value.items()]}
    rec = None if plain else _record_type(value)
    if rec is not None:
        fields = value._asdict() if hasattr(value, "_asdict") else {
            f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {"rec": f"{rec.__module__}:{rec.__qualname__}",
                "fields": {k: _encode(v, arrays) for k, v in fields.items()}}
    if isinstance(value, list):
        return {"l": [_encode(v, arrays, plain) for v in value]}
    if type(value) is tuple:
        return {"t": [_encode(v, arrays, plain) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {"set": [_encode(v, arrays, plain) for v in sorted(value)]}
    if type(value) is dict:
        return {"d": [[_encode(k, arrays, plain), _encode(v, arrays, plain)] for k, v in value.items()]}
    raise _Unsupported(type(value).__name__)


def _decode(node: Any, arrays: dict[str, np.ndarray]) -> Any:
    if not isinstance(node, dict):
        return node
    if "f" in node:
        return float(node["f"])
    if "a" in node:
        return arrays[node["a"]]
    if "s" in node:
        return _decode(node["s"], arrays)[()]
    if "dt" in node:
        return np.dtype(node["dt"])
    if "ar" in node:
        return to_record({k: _decode(v, arrays) for k, v in node["ar"]})
    if "rec" in node:
        return _record_class(node["rec"])(**{k: _decode(v, arrays) for k, v in node["fields"].items()})
    if "l" in node:
        return [_decode(v, arrays) for v in node["l"]]
    if "t" in node:
        return tuple(_decode(v, arrays) for v in node["t"])
    if "set" in node:
        return {_decode(v, arrays) for v in node["set"]}
    if "d" in node:
        return {_freeze(_decode(k, arrays)): _decode(v, arrays) for k, v in node["d"]}
    raise CheckpointError(f"unknown state node {sorted(node)}")


def _freeze(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def _record_class(ref: str) -> type:
    import importlib

    module, _, name = ref.partition(":")
    if not module.startswith("fedsim."):
        raise CheckpointError(f"state names a type outside fedsim: {ref!r}")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and (dataclasses.is_dataclass(obj) or hasattr(obj, "_fields"))):
        raise CheckpointError(f"state names {ref!r}, which is not a NamedTuple or dataclass")
    return obj


def object_state(obj: Any, skip: tuple[Any, ...] = (), plain_only: bool = False,
                 exclude: frozenset[str] = frozenset()) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every attribute of ``obj`` that is data, as (arrays, JSON tree); nothing pickled.

    Data is: numbers, strings, None, numpy arrays and scalars, Flower ArrayRecords, fedsim's
    NamedTuples and dataclasses, and lists, tuples, sets and dicts of these. Callables,
    classes, modules and pydantic models are configuration (rebuilt from the config) and are left out, as
    are the objects in ``skip`` (e.g. the wrapper a strategy points back to). Any other
    object (an inner strategy, a codec with a cache) is walked the same way, field by field.
    With ``plain_only``, only attributes that are plain data (numbers, strings, arrays and
    containers of them) are kept and every other one is left out: the counters and clock of
    an object whose other parts are rebuilt from the config (the wrapper, the network model).
    Attributes named in ``exclude`` (of ``obj`` itself) are left out too.
    """
    arrays: dict[str, np.ndarray] = {}
    tree = _walk(obj, arrays, {id(s) for s in skip} | {id(obj)}, 0, plain_only, exclude)
    return arrays, tree


def _walk(obj: Any, arrays: dict[str, np.ndarray], skip: set[int], depth: int, plain: bool = False,
          exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    if depth > 8:
        raise CheckpointError(f"state nested too deeply at {type(obj).__name__}")
    tree: dict[str, Any] = {}
    for name, value in vars(obj).items():
        if id(value) in skip or _is_config(value) or name in exclude:
            continue
        try:
            tree[name] = _encode(value, arrays, plain)
        except _Unsupported:
            if plain:
                continue
            if not hasattr(value, "__dict__"):
                raise CheckpointError(f"{type(obj).__name__}.{name} ({type(value).__name__}) is not "
                                      "data a checkpoint can hold") from None
            tree[name] = {"o": type(value).__qualname__, "attrs": _walk(value, arrays, skip | {id(value)}, depth + 1)}
    return tree


def restore_object_state(obj: Any, arrays: dict[str, np.ndarray], tree: dict[str, Any], where: str = "") -> None:
    """Set the attributes that :func:`object_state` captured back on a freshly built ``obj``.

    A class that renamed an attribute maps the old name to the new one in a class attribute
    ``state_renames`` (``{"old": "new"}``), so a checkpoint saved before the rename resumes.
    Data saved under the name of a method of ``obj``'s class is refused (CheckpointError):
    set on the instance it would hide the method (an old EF21-W checkpoint's ``start``
    over Flower's ``Strategy.start``).
    """
    where = where or type(obj).__name__
    renames: dict[str, str] = dict(getattr(type(obj), "state_renames", {}))
    for saved, node in tree.items():
        name = renames.get(saved, saved)
        if callable(inspect.getattr_static(type(obj), name, None)):
            raise CheckpointError(f"{where}.{name}: the checkpoint holds data under the name of a method of "
                                  f"{type(obj).__name__}; restoring it would hide the method (an attribute renamed "
                                  f"since the checkpoint was saved? map it in {type(obj).__name__}.state_renames)")
        if isinstance(node, dict) and "o" in node:
            target = getattr(obj, name, None)
            if target is None or type(target).__qualname__ != node["o"]:
                raise CheckpointError(
                    f"{where}.{name}: the checkpoint holds a {node['o']} that a fresh {type(obj).__name__} does not "
                    f"have (it is built during a round); this strategy cannot be resumed")
            restore_object_state(target, arrays, node["attrs"], f"{where}.{name}")
        else:
            try:
                setattr(obj, name, _decode(node, arrays))
            except (AttributeError, TypeError) as err:  # a frozen object, a read-only property
                raise CheckpointError(f"{where}.{name} cannot be restored ({err})") from None


def save_state(directory: Path, stem: str, obj: Any, skip: tuple[Any, ...] = (), plain_only: bool = False,
               exclude: frozenset[str] = frozenset()) -> None:
    arrays, tree = object_state(obj, skip, plain_only, exclude)
    # mypy matches **arrays against savez's allow_pickle: bool too; the keys are array names
    np.savez(directory / f"{stem}.npz", **arrays)  # type: ignore[arg-type]
    (directory / f"{stem}.json").write_text(json.dumps(tree), encoding="utf-8")


def load_state(directory: Path, stem: str, obj: Any) -> None:
    with np.load(directory / f"{stem}.npz", allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    tree = json.loads((directory / f"{stem}.json").read_text(encoding="utf-8"))
    restore_object_state(obj, arrays, tree)


# --------------------------------------------------------------------------- arrays


def save_arrays(path: Path, arrays: ArrayRecord) -> None:
    """An ArrayRecord (a model) as ``.npz``, keys = parameter names, written then renamed."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **{k: a.numpy() for k, a in arrays.items()})  # type: ignore[arg-type]  # as in save_state
    os.replace(tmp, path)


def load_arrays(path: Path) -> ArrayRecord:
    """A model saved by :func:`save_arrays` (parameter order kept)."""
    with np.load(path, allow_pickle=False) as f:
        return to_record({k: f[k] for k in f.files})


# --------------------------------------------------------------------------- checkpoints


def latest(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of ``run_dir``, or None."""
    root = Path(run_dir) / CHECKPOINT_DIR
    try:
        pointer = json.loads((root / LATEST).read_text(encoding="utf-8"))
        name = str(pointer["dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not re.fullmatch(r"round-\d+", name) or not (root / name / "state.json").is_file():
        return None
    return root / name


Part = tuple[Any, tuple[Any, ...], bool, frozenset[str]]  # object, objects to skip, plain only, names left out


def save_checkpoint(run_dir: Path, rnd: int, arrays: ArrayRecord, parts: dict[str, Part], grid: Any,
                    extra: dict[str, Any]) -> Path:
    """Write checkpoint ``rnd`` in full, then point ``latest.json`` at it, then drop older ones.

    ``parts`` names the objects whose state is saved (``"strategy"``: the inner strategy,
    walked in full; ``"wrapper"``, ``"network"``: plain data only), each as
    ``<name>.npz`` + ``<name>.json``.
    """
    root = run_dir / CHECKPOINT_DIR
    final = root / f"round-{rnd:06d}"
    work = root / f".round-{rnd:06d}.partial"
    shutil.rmtree(work, ignore_errors=True)
    (work / "clients").mkdir(parents=True)
    save_arrays(work / "model.npz", arrays)
    for stem, (obj, skip, plain, exclude) in parts.items():
        save_state(work, stem, obj, skip, plain, exclude)
    hook = getattr(grid, "save_client_states", None)
    clients = int(hook(work / "clients")) if hook is not None else None
    state = {"format": FORMAT, "round": rnd, "client_states": clients, **extra}
    (work / "state.json").write_text(json.dumps(state), encoding="utf-8")
    _fsync_tree(work)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(work, final)
    write_json_atomic(root / LATEST, {"round": rnd, "dir": final.name})
    for old in root.iterdir():
        if old.is_dir() and old.name != final.name and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_tree(directory: Path) -> None:
    for p in directory.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def read_checkpoint(path: Path) -> dict[str, Any]:
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r}: format {state.get('format')!r}, expected {FORMAT}")
    return dict(state)


def codec_is_stateful(codec: Any) -> bool:
    """Whether clients keep state between rounds with this codec (error feedback, momentum)."""
    from fedsim.codecs.base import TensorInfo

    try:
        return bool(codec.init(TensorInfo("probe", (4,))))
    except Exception:  # noqa: BLE001 - a plugin codec that cannot say: assume it keeps state
        return True


def restore_checkpoint(path: Path, parts: dict[str, Any], grid: Any,
                       stateful_clients: bool) -> tuple[ArrayRecord, dict[str, Any]]:
    """The global model and ``state.json`` of checkpoint ``path``; the strategy's state and
    the clients' state are restored in place.

    A checkpoint written through a grid without the client-state hooks (Flower's own
    simulation engine keeps each client's state in a per-node context the ServerApp cannot
    reach) cannot give clients back their state: resuming it is refused when the clients
    keep state (``stateful_clients``), and goes on otherwise.

    An object of ``parts`` that defines ``prepare_resume(model: ArrayRecord)`` is handed the
    checkpoint's model first: the wrapper (:meth:`fedsim.engine.wrapper.FedsimWrapper.prepare_resume`)
    has a strategy that builds objects in its first round (EF21-W's wires) build them there,
    and the strategy's saved state is then restored into them.
    """
    state = read_checkpoint(path)
    model = load_arrays(path / "model.npz")
    for stem, obj in parts.items():
        prepare = getattr(obj, "prepare_resume", None)
        if callable(prepare):  # a strategy that builds its objects in its first round builds them now
            prepare(model)
        load_state(path, stem, obj)
    hook = getattr(grid, "load_client_states", None)
    saved = state["client_states"]
    if saved is None and stateful_clients:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was written by a simulation backend that cannot save client state "
            "(Flower's engine), and this run's clients keep state (error feedback): it cannot be resumed "
            "exactly; run with simulation.backend inprocess or pool to get resumable runs")
    if saved:
        if hook is None:
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds the state of {saved} clients, which this simulation backend "
                "cannot restore (Flower's engine keeps it where the server cannot reach); resume with "
                "simulation.backend set to inprocess or pool")
        hook(path / "clients")
    return model, state


def rewind_run_files(run_dir: Path, rows: list[dict[str, Any]], last_round: int) -> None:
    """Make ``metrics.jsonl`` the checkpoint's rows and keep the ``clients.jsonl`` rows of
    rounds up to ``last_round`` (a killed run may have written rows after its checkpoint,
    and half a line)."""
    from fedsim.metrics import CLIENTS_FILE, METRICS_FILE

    _replace_text(run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in rows))
    path = run_dir / CLIENTS_FILE
    kept = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if int(json.loads(line)["round"]) <= last_round:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                continue  # the half-written last line of a killed run
    _replace_text(path, "".join(kept))


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
