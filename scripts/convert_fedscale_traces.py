#!/usr/bin/env python3
"""Convert FedScale's device and behaviour traces into fedsim's trace format.

!!! TRUSTED INPUT ONLY !!!
FedScale ships its traces as Python pickles. Unpickling a file can run arbitrary code,
so this script is the ONLY place in fedsim that unpickles anything, and it must only
ever be run, by hand, on files the user chose and trusts (e.g. the files FedScale's own
download script fetched for them). Never run it on anything that came over the network
from a client or a peer, and never call it from the simulator or the server. As a
second line of defence the unpickler below refuses every class except plain
containers and numpy scalars/arrays, but that is not a sandbox: trust the file first.

FedScale's files (Lai et al., "FedScale: Benchmarking Model and System Performance of
Federated Learning at Scale", ICML 2022; https://github.com/SymbioticLab/FedScale):

``client_device_capacity``
    ``{client_id: {"computation": float, "communication": float}}``: inference latency
    in ms/sample and bandwidth in kbit/s (FedScale computes completion time as
    ``3 * batch * steps * computation / 1000`` s plus ``size_kbit / communication`` s).
``client_behave_trace``
    ``{client_id: {"active": [s, ...], "inactive": [s, ...], "finish_time": s,
    "duration": s, "model": str}}``: the i-th active interval is
    ``[active[i], inactive[i])``, repeating every ``finish_time`` seconds.

fedsim's record (see :mod:`fedsim.network.traces`): ``ms_per_sample`` =
``train_factor * computation`` (training, default factor 3 as FedScale uses);
``uplink_mbps = downlink_mbps = communication / 1000`` (FedScale has one bandwidth);
``active`` = the paired intervals (clipped to ``[0, finish_time]``, empty ones dropped);
``period_s = finish_time``. ``duration`` and ``model`` are not used.

Usage::

    python scripts/convert_fedscale_traces.py --capacity client_device_capacity \
        --behaviour client_behave_trace --out traces.json [--limit 1000]
"""

from __future__ import annotations

import argparse
import io
import pickle  # trusted input only: see the module docstring
import sys
from pathlib import Path
from typing import Any

from fedsim.network.traces import TraceRecord, dump_traces

_ALLOWED = {
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "float"), ("builtins", "int"), ("builtins", "str"),
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Refuses every global but plain containers and numpy arrays/scalars."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: FedScale traces hold only dicts, lists "
                "and numbers; this file is not what it claims to be"
            )
        return super().find_class(module, name)


def load_trusted_pickle(path: Path) -> Any:
    """Unpickle a FedScale trace file the user trusts (see the module docstring)."""
    return _RestrictedUnpickler(io.BytesIO(path.read_bytes())).load()


def convert(
    capacity: dict[Any, dict[str, Any]] | None,
    behaviour: dict[Any, dict[str, Any]] | None,
    train_factor: float = 3.0,
    limit: int | None = None,
) -> list[TraceRecord]:
    """FedScale's two dicts -> fedsim trace records (validated), sorted by client id."""
    if capacity is None and behaviour is None:
        raise ValueError("give at least one of the capacity and behaviour traces")
    ids = sorted(set(capacity or {}) | set(behaviour or {}), key=int)
    if limit is not None:
        ids = ids[:limit]
    out = []
    for cid in ids:
        rec: dict[str, Any] = {"client": int(cid)}
        cap = (capacity or {}).get(cid)
        if cap is not None:
            rec["ms_per_sample"] = train_factor * float(cap["computation"])
            mbps = float(cap["communication"]) / 1000.0  # kbit/s -> Mbit/s
            rec["uplink_mbps"] = rec["downlink_mbps"] = mbps
        beh = (behaviour or {}).get(cid)
        if beh is not None:
            period = float(beh["finish_time"])
            intervals = []
            for a, b in zip(beh["active"], beh["inactive"]):
                a, b = max(float(a), 0.0), min(float(b), period)
                if a < b:
                    intervals.append((a, b))
            intervals.sort()
            merged: list[tuple[float, float]] = []
            for a, b in intervals:  # FedScale's lists may touch or overlap: merge them
                if merged and a <= merged[-1][1]:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], b))
                else:
                    merged.append((a, b))
            rec["period_s"] = period
            rec["active"] = merged
        out.append(TraceRecord.model_validate(rec))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capacity", type=Path, help="FedScale client_device_capacity (pickle)")
    ap.add_argument("--behaviour", type=Path, help="FedScale client_behave_trace (pickle)")
    ap.add_argument("--out", type=Path, required=True, help="output .json or .csv")
    ap.add_argument("--train-factor", type=float, default=3.0,
                    help="training / inference time per sample (FedScale uses 3)")
    ap.add_argument("--limit", type=int, default=None, help="keep the first N clients")
    args = ap.parse_args(argv)
    print("convert_fedscale_traces: unpickling files you chose; only run this on trusted "
          "files (see the docstring).", file=sys.stderr)
    cap = load_trusted_pickle(args.capacity) if args.capacity else None
    beh = load_trusted_pickle(args.behaviour) if args.behaviour else None
    records = convert(cap, beh, train_factor=args.train_factor, limit=args.limit)
    dump_traces(records, args.out)
    print(f"wrote {len(records)} client records to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
