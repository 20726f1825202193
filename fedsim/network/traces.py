"""Per-client device traces: a documented CSV / JSON format and its validating loader.

The fields are those of FedScale's traces (Lai et al., ICML 2022: a device capacity
trace with compute speed and bandwidth per client, and a behaviour trace with active
intervals per client), in fedsim's units. ``scripts/convert_fedscale_traces.py``
converts FedScale's own files (trusted input only: they are pickles).

One record per client; every field but ``client`` is optional, and a field a record
gives replaces what the client's device profile would have drawn:

===============  ======================================================================
``client``       integer id >= 0, unique in the file
``ms_per_sample`` training milliseconds per sample (> 0)
``uplink_mbps``  uplink throughput, Mbit/s (> 0)
``downlink_mbps`` downlink throughput, Mbit/s (> 0)
``rtt_ms``       round-trip latency, ms (>= 0)
``period_s``     the active intervals repeat with this period, s (> 0); absent: they
                 are absolute times on the virtual clock
``active``       sorted, disjoint ``[start, end)`` intervals in seconds (start < end,
                 within [0, period_s] when there is a period); absent: always active
===============  ======================================================================

CSV: a header row naming ``client`` and any of the other columns; an empty cell is an
absent field; ``active`` is written ``start:end`` pairs separated by ``;``::

    client,ms_per_sample,uplink_mbps,downlink_mbps,rtt_ms,period_s,active
    0,486.0,5.6,5.6,,86400,0:3600;7200:9000
    1,120.5,20,40,30,,

JSON::

    {"format": "fedsim-trace", "version": 1,
     "clients": [{"client": 0, "ms_per_sample": 486.0, "uplink_mbps": 5.6,
                  "downlink_mbps": 5.6, "period_s": 86400,
                  "active": [[0, 3600], [7200, 9000]]}]}

Simulated client ``i`` takes the record at position ``i mod n`` of the records sorted
by ``client`` (so a trace of 500 devices serves a run of 100 or of 10 000 clients).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = ["TRACE_FIELDS", "TraceError", "TraceFile", "TraceRecord", "load_traces", "dump_traces"]

TRACE_FIELDS = ("client", "ms_per_sample", "uplink_mbps", "downlink_mbps", "rtt_ms", "period_s", "active")
MAX_TRACE_BYTES = 512 * 2**20  # refuse absurd files before reading them


class TraceError(ValueError):
    """A trace file that cannot be used; the message says where and why."""


class TraceRecord(BaseModel):
    """One client's trace (see the module docstring for units)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    client: int = Field(ge=0)
    ms_per_sample: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    uplink_mbps: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    downlink_mbps: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    rtt_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    period_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    active: tuple[tuple[float, float], ...] | None = None

    @field_validator("active")
    @classmethod
    def _intervals(cls, v: tuple[tuple[float, float], ...] | None) -> Any:
        if v is None:
            return v
        prev_end = -math.inf
        for a, b in v:
            if not (math.isfinite(a) and math.isfinite(b)):
                raise ValueError(f"active interval [{a}, {b}) is not finite")
            if not a < b:
                raise ValueError(f"active interval [{a}, {b}) needs start < end")
            if a < prev_end:
                raise ValueError(f"active intervals must be sorted and disjoint; [{a}, {b}) "
                                 f"starts before the previous one ends ({prev_end})")
            prev_end = b
        return v

    @model_validator(mode="after")
    def _within_period(self) -> TraceRecord:
        if self.period_s is not None and self.active:
            if self.active[0][0] < 0 or self.active[-1][1] > self.period_s:
                raise ValueError(f"active intervals must lie in [0, period_s={self.period_s}]")
        if self.period_s is not None and self.active is None:
            raise ValueError("period_s without active intervals means nothing; drop it")
        return self


class TraceFile(BaseModel):
    """The JSON document: a format tag, a version and the records."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    format: Literal["fedsim-trace"]
    version: Literal[1]
    clients: tuple[TraceRecord, ...] = Field(min_length=1)


def _reason(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        parts.append(f"{loc}: {e['msg']}" if loc else e["msg"])
    return "; ".join(parts)


def _parse_intervals(cell: str, where: str) -> list[tuple[float, float]]:
    out = []
    for pair in cell.split(";"):
        pair = pair.strip()
        if not pair:
            continue
        bits = pair.split(":")
        if len(bits) != 2:
            raise TraceError(f"{where}: active interval {pair!r} is not 'start:end'")
        try:
            out.append((float(bits[0]), float(bits[1])))
        except ValueError:
            raise TraceError(f"{where}: active interval {pair!r} is not two numbers") from None
    return out


def _load_csv(text: str, name: str) -> list[TraceRecord]:
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    if not header:
        raise TraceError(f"{name}: empty file (expected a header row)")
    header = [h.strip() for h in header]
    unknown = [h for h in header if h not in TRACE_FIELDS]
    if unknown:
        raise TraceError(f"{name}: unknown column(s) {unknown}; known: {', '.join(TRACE_FIELDS)}")
    if "client" not in header:
        raise TraceError(f"{name}: a 'client' column is required")
    if len(set(header)) != len(header):
        raise TraceError(f"{name}: duplicate column in header {header}")
    reader.fieldnames = header
    records = []
    for row in reader:
        where = f"{name} line {reader.line_num}"
        if None in row:
            raise TraceError(f"{where}: more cells than columns")
        data: dict[str, Any] = {}
        for key, cell in row.items():
            if cell is None:
                raise TraceError(f"{where}: fewer cells than columns")
            cell = cell.strip()
            if cell == "":
                continue
            data[key] = _parse_intervals(cell, where) if key == "active" else cell
        try:
            records.append(TraceRecord.model_validate(data))
        except ValidationError as err:
            raise TraceError(f"{where}: {_reason(err)}") from None
    return records


def _load_json(text: str, name: str) -> list[TraceRecord]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise TraceError(f"{name}: not valid JSON ({err})") from None
    try:
        return list(TraceFile.model_validate(doc).clients)
    except ValidationError as err:
        raise TraceError(f"{name}: {_reason(err)}") from None


def load_traces(path: str | Path) -> tuple[TraceRecord, ...]:
    """Read and validate a trace file (``.csv`` or ``.json``); records sorted by client.

    Raises
    ------
    TraceError
        The file is missing, too large, of an unknown kind, malformed, has duplicate
        client ids or no records; the message names the file, the line (CSV) or the
        field, and the reason.
    """
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"trace file {str(p)!r} does not exist")
    if p.stat().st_size > MAX_TRACE_BYTES:
        raise TraceError(f"{p.name}: {p.stat().st_size} bytes, more than {MAX_TRACE_BYTES}")
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise TraceError(f"{p.name}: trace files are .csv or .json; got {suffix or 'no suffix'!r}")
    text = p.read_text(encoding="utf-8")
    records = _load_csv(text, p.name) if suffix == ".csv" else _load_json(text, p.name)
    if not records:
        raise TraceError(f"{p.name}: no client records")
    seen: set[int] = set()
    for r in records:
        if r.client in seen:
            raise TraceError(f"{p.name}: client {r.client} appears more than once")
        seen.add(r.client)
    return tuple(sorted(records, key=lambda r: r.client))


def dump_traces(records: list[TraceRecord] | tuple[TraceRecord, ...], path: str | Path) -> None:
    """Write records in the documented format (by suffix: ``.json`` or ``.csv``)."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        doc = {"format": "fedsim-trace", "version": 1,
               "clients": [r.model_dump(exclude_none=True) for r in records]}
        p.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        return
    if p.suffix.lower() != ".csv":
        raise TraceError(f"{p.name}: trace files are .csv or .json")
    with p.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(TRACE_FIELDS)
        for r in records:
            row = []
            for k in TRACE_FIELDS:
                v = getattr(r, k)
                if v is None:
                    row.append("")
                elif k == "active":
                    row.append(";".join(f"{a!r}:{b!r}" for a, b in v))
                else:
                    row.append(repr(v) if isinstance(v, float) else str(v))
            w.writerow(row)
