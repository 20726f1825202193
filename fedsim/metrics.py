"""Run directory and metrics: ``metrics.jsonl`` (a row a round), ``clients.jsonl`` (a row
per client per round), ``metrics.csv``, ``summary.json`` and plots.

Each round's row holds: ``round``, ``test_accuracy``, ``test_loss`` (server-side, on the
held-out test set), ``train_loss`` (mean over the clients that replied, weighted by
examples), ``sampled``, ``replied``, ``rejected``, ``failed``, ``bytes_up`` and
``bytes_down`` (real payload bytes of that round: every reply that arrived, and every
model sent), their running totals, ``model_refused`` (1 when the aggregate was not finite
and the previous model was kept) and ``wall_time`` (seconds since the first round).
Every file is strict JSON: a non-finite value (a diverged loss) is written as ``null``.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
CLIENTS_FILE = "clients.jsonl"
SUMMARY_FILE = "summary.json"


def make_run_dir(base: str | Path, name: str) -> Path:
    """``base/name-YYYYmmdd-HHMMSS`` (with a suffix if it exists)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = Path(base)
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        d = root / (f"{name}-{stamp}" + (f"-{n}" if n else ""))
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
    raise RuntimeError(f"could not make a run directory under {root}")


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, recursively.

    JSON has no NaN (Python's ``json`` writes a bare ``NaN`` that other readers refuse):
    a diverged loss or accuracy is written as ``null``.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_line(value: Any) -> str:
    """One JSON line, non-finite floats as null (:func:`json_safe`)."""
    return json.dumps(json_safe(value), allow_nan=False) + "\n"


class Recorder:
    """Appends round rows and client rows as they come; writes the CSV and summary at the end."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        self._metrics = open(self.dir / METRICS_FILE, "a", encoding="utf-8")
        self._clients = open(self.dir / CLIENTS_FILE, "a", encoding="utf-8")
        self._cum_up = 0
        self._cum_down = 0

    def round(self, row: Mapping[str, Any], clients: Iterable[Any] = ()) -> dict[str, Any]:
        """Append a round's row (non-finite values become None) and its clients; return the row."""
        out: dict[str, Any] = json_safe(dict(row))
        self._cum_up += int(out.get("bytes_up") or 0)
        self._cum_down += int(out.get("bytes_down") or 0)
        out["cum_bytes_up"] = self._cum_up
        out["cum_bytes_down"] = self._cum_down
        self.rows.append(out)
        self._metrics.write(json_line(out))
        self._metrics.flush()
        for c in clients:
            self._clients.write(json_line(asdict(c) if hasattr(c, "__dataclass_fields__") else dict(c)))
        self._clients.flush()
        return out

    def restore(self, rows: list[dict[str, Any]]) -> None:
        """Continue after ``rows`` (already in the files): a resumed run's running totals."""
        self.rows = [dict(r) for r in rows]
        self._cum_up = int(rows[-1].get("cum_bytes_up", 0)) if rows else 0
        self._cum_down = int(rows[-1].get("cum_bytes_down", 0)) if rows else 0

    def close(self) -> None:
        self._metrics.close()
        self._clients.close()
        write_csv(self.dir / "metrics.csv", self.rows)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow(r)


def read_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    p = Path(run_dir) / METRICS_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a fedsim run directory (no {METRICS_FILE})")
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def summarize(rows: list[dict[str, Any]], target: float | None = None) -> dict[str, Any]:
    """Final and best accuracy, totals, and the round (and bytes) to reach ``target``."""
    evals = [r for r in rows if r.get("test_accuracy") is not None]
    last = rows[-1] if rows else {}
    out: dict[str, Any] = {
        "rounds": int(last.get("round", 0)),
        "final_accuracy": evals[-1]["test_accuracy"] if evals else None,
        "best_accuracy": max((r["test_accuracy"] for r in evals), default=None),
        "final_loss": evals[-1]["test_loss"] if evals else None,
        "total_bytes_up": int(last.get("cum_bytes_up", 0)),
        "total_bytes_down": int(last.get("cum_bytes_down", 0)),
        "rejected": int(sum(r.get("rejected") or 0 for r in rows)),
        "failed": int(sum(r.get("failed") or 0 for r in rows)),
        "model_refused": int(sum(r.get("model_refused") or 0 for r in rows)),
        "wall_time": float(last.get("wall_time", 0.0)),
    }
    if target is not None:
        hit = next((r for r in evals if r["test_accuracy"] >= target), None)
        out["target_accuracy"] = target
        out["round_to_target"] = hit["round"] if hit else None
        out["bytes_up_to_target"] = hit["cum_bytes_up"] if hit else None
        if hit is not None and "sim_time" in hit:
            out["sim_time_to_target"] = hit["sim_time"]
    return out
