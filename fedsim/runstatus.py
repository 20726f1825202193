"""A run directory's status file, ``status.json``: running, finished or failed.

The server loop writes it when a run starts, after every round and when it ends, so a
run killed mid-way (SIGKILL, a power cut) is left marked ``running`` at the last round it
completed: ``fedsim compare`` then says the run is unfinished instead of showing it as a
shorter run, and ``fedsim run --resume RUN_DIR`` continues it from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
STATES = ("running", "finished", "failed")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file in the same directory, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_status(run_dir: str | Path, state: str, round: int, rounds: int, error: str | None = None) -> None:
    """Record ``state`` (one of :data:`STATES`) and the last completed round."""
    if state not in STATES:
        raise ValueError(f"run state must be one of {STATES}; got {state!r}")
    data: dict[str, Any] = {"state": state, "round": int(round), "rounds": int(rounds),
                            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if error:
        data["error"] = error
    write_json_atomic(Path(run_dir) / STATUS_FILE, data)


def run_status(run_dir: str | Path) -> dict[str, Any]:
    """The run's status: ``state``, ``round`` (last completed), ``rounds`` (planned), ``error``.

    A directory without a readable status file (written by fedsim before status files
    existed, or damaged) is ``{"state": "unknown"}``.
    """
    try:
        data = json.loads((Path(run_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"state": "unknown"}
    if not isinstance(data, dict) or data.get("state") not in STATES:
        return {"state": "unknown"}
    return data


def unfinished_note(name: str, status: dict[str, Any]) -> str | None:
    """One line saying why a run is not a finished run (None when it is finished)."""
    state = status.get("state")
    if state == "finished":
        return None
    if state == "unknown":
        return f"run {name}: no status file; it may be unfinished"
    where = f"stopped after round {status.get('round')} of {status.get('rounds')}"
    if state == "running":
        return f"run {name}: unfinished ({where}: still running, or killed; fedsim run --resume continues it)"
    return f"run {name}: failed ({where}: {status.get('error', 'see its log')})"
