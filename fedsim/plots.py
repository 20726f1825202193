"""Plots of one run, overlays of several, and mean +- sd bands over seeds (matplotlib, no display).

Each figure is one metric (test accuracy or test loss, server-side) against one x axis:
the round, the cumulative uplink bytes, and the simulated time when a network model ran.
Curves of different runs differ in colour, marker and line style, so they stay apart in
greyscale print and where they overlap.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MB = 1e6
Rows = list[dict[str, Any]]
# (x key, axis label, scale, file stem)
X_AXES = [("round", "round", 1.0, "round"),
          ("cum_bytes_up", "cumulative uplink (MB)", MB, "uplink"),
          ("sim_time", "simulated time (s)", 1.0, "simtime")]
Y_AXES = [("test_accuracy", "test accuracy", "accuracy"), ("test_loss", "test loss", "loss")]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<"]
LINESTYLES = ["-", "--", "-.", ":"]
IGNORED_KEYS = ("name", "output.", "simulation.")  # never what a comparison is about


def _evals(rows: Rows) -> Rows:
    return [r for r in rows if r.get("test_accuracy") is not None]


def _styles() -> Any:
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i in itertools.count():
        yield {"color": colors[i % len(colors)], "marker": MARKERS[i % len(MARKERS)],
               "linestyle": LINESTYLES[i % len(LINESTYLES)]}


def _x_axes(all_rows: Sequence[Rows]) -> list[tuple[str, str, float, str]]:
    has_time = any("sim_time" in r for rows in all_rows for r in rows)
    return [a for a in X_AXES if a[0] != "sim_time" or has_time]


def _wide(key: str, ends: Sequence[float]) -> bool:
    """Log-scale the uplink axis when the runs' totals differ more than 10x (compressed vs dense):
    on a linear axis the compressed curves would be squeezed against 0."""
    ends = [e for e in ends if e > 0]
    return key == "cum_bytes_up" and len(ends) > 1 and max(ends) > 10 * min(ends)


def _save(fig: Any, ax: Any, path: Path, title: str, legend: bool) -> Path:
    if ax.get_xlabel() == "round":
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_runs(runs: Sequence[tuple[str, Rows]], out_dir: str | Path, prefix: str = "", title: str = "") -> list[Path]:
    """Accuracy and loss vs round, vs cumulative uplink MB and vs simulated time (when known),
    one figure each, one curve per run: ``{prefix}{accuracy|loss}_vs_{round|uplink|simtime}.png``."""
    out_dir = Path(out_dir)
    paths = []
    legend = len(runs) > 1 or bool(runs and runs[0][0])
    for key, xlabel, scale, stem in _x_axes([rows for _, rows in runs]):
        for ykey, ylabel, ystem in Y_AXES:
            fig, ax = plt.subplots(figsize=(6, 4))
            log_x = _wide(key, [max((r.get(key) or 0 for r in rows), default=0) for _, rows in runs])
            for (name, rows), style in zip(runs, _styles()):
                ev = [r for r in _evals(rows) if r.get(key) is not None and r.get(ykey) is not None
                      and not (log_x and r[key] <= 0)]
                ax.plot([r[key] / scale for r in ev], [r[ykey] for r in ev], label=name,
                        markevery=max(1, len(ev) // 12), markersize=5, **style)
            ax.set_xlabel(xlabel + (", log scale" if log_x else ""))
            if log_x:
                ax.set_xscale("log")
            ax.set_ylabel(ylabel)
            paths.append(_save(fig, ax, out_dir / f"{prefix}{ystem}_vs_{stem}.png", title, legend))
    return paths


def plot_run(rows: Rows, out_dir: str | Path, title: str = "") -> list[Path]:
    """The plots of one run, titled with what ran (``fedsim.api.describe``)."""
    return plot_runs([("", rows)], out_dir, title=title)


def band(runs: Sequence[Rows], key: str, ykey: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean x, mean y and sd of y (ddof 1; 0 for one run) over runs, at the rounds every run evaluated."""
    per_run = [{r["round"]: r for r in _evals(rows) if r.get(key) is not None and r.get(ykey) is not None}
               for rows in runs]
    common = sorted(set.intersection(*(set(d) for d in per_run))) if per_run else []
    x = np.array([[d[k][key] / scale for k in common] for d in per_run], dtype=float).reshape(len(per_run), -1)
    y = np.array([[d[k][ykey] for k in common] for d in per_run], dtype=float).reshape(len(per_run), -1)
    sd = y.std(axis=0, ddof=1) if len(per_run) > 1 else np.zeros(y.shape[1])
    return x.mean(axis=0), y.mean(axis=0), sd


def plot_bands(groups: Sequence[tuple[str, Sequence[Rows]]], out_dir: str | Path, prefix: str = "",
               title: str = "") -> list[Path]:
    """One curve per group (a combination of a sweep): the mean over its runs (seeds) with a
    shaded band of +- one standard deviation; the x of the uplink and time axes is the mean."""
    out_dir = Path(out_dir)
    paths = []
    for key, xlabel, scale, stem in _x_axes([rows for _, runs in groups for rows in runs]):
        for ykey, ylabel, ystem in Y_AXES:
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
            bands = [band(runs, key, ykey, scale) for _, runs in groups]
            log_x = _wide(key, [float(x[-1]) if len(x) else 0.0 for x, _, _ in bands])
            for (name, runs), (x, y, sd), style in zip(groups, bands, _styles()):
                if log_x:
                    keep = x > 0
                    x, y, sd = x[keep], y[keep], sd[keep]
                ax.plot(x, y, label=f"{name} (n={len(runs)})", markevery=max(1, len(x) // 12), markersize=5, **style)
                ax.fill_between(x, y - sd, y + sd, color=style["color"], alpha=0.18, linewidth=0)
            ax.set_xlabel(xlabel + (", log scale" if log_x else ""))
            if log_x:
                ax.set_xscale("log")
            ax.set_ylabel(f"{ylabel} (mean $\\pm$ sd)")
            paths.append(_save(fig, ax, out_dir / f"{prefix}{ystem}_vs_{stem}.png", title, True))
    return paths


# --------------------------------------------------------------------------- labels


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"codec": {"name": "dgc"}}`` -> ``{"codec.name": "dgc"}`` (an empty mapping holds no key)."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def short_key(key: str) -> str:
    """``codec.name`` -> ``codec``, ``codec.params.density`` -> ``codec.density``."""
    return key.removesuffix(".name").replace(".params.", ".")


def differing_labels(configs: Sequence[Mapping[str, Any]]) -> list[str] | None:
    """A legend label per config from the keys whose values differ between them
    (``codec=dgc, seed=1``; a key a config lacks, such as another codec's parameter, is left
    out of its label); ``None`` if none differ."""
    flat = [flatten(c) for c in configs]
    keys = sorted({k for f in flat for k in f if not k.startswith(IGNORED_KEYS)})
    diff = [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1]
    if not diff:
        return None
    return [", ".join(f"{short_key(k)}={f[k]}" for k in diff if k in f) for f in flat]


def common_title(configs: Sequence[Mapping[str, Any]]) -> str:
    """What the compared runs share among dataset, model, strategy and codec (a plot title)."""
    flat = [flatten(c) for c in configs]
    parts = []
    for key in ("data.name", "model.name", "strategy.name", "codec.name"):
        values = {repr(f.get(key)) for f in flat}
        if len(values) == 1 and flat and flat[0].get(key) is not None:
            parts.append(f"{short_key(key)} {flat[0][key]}")
    return ", ".join(parts)
