"""Plots of one run and overlays of several (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MB = 1e6


def _evals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("test_accuracy") is not None]


def plot_runs(runs: Sequence[tuple[str, list[dict[str, Any]]]], out_dir: str | Path, prefix: str = "") -> list[Path]:
    """Accuracy vs round and vs cumulative uplink MB (and vs simulated time when known)."""
    out_dir = Path(out_dir)
    axes_spec = [("round", "round", 1.0, "accuracy_vs_round.png"),
                 ("cum_bytes_up", "cumulative uplink (MB)", MB, "accuracy_vs_uplink.png")]
    if any("sim_time" in r for _, rows in runs for r in rows):
        axes_spec.append(("sim_time", "simulated time (s)", 1.0, "accuracy_vs_simtime.png"))
    paths = []
    for key, label, scale, fname in axes_spec:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, rows in runs:
            ev = [r for r in _evals(rows) if key in r]
            ax.plot([r[key] / scale for r in ev], [r["test_accuracy"] for r in ev], marker=".", label=name)
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        if len(runs) > 1 or runs[0][0]:
            ax.legend()
        fig.tight_layout()
        p = out_dir / (prefix + fname)
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths
