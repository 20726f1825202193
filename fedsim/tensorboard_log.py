"""TensorBoard event files for a run: every numeric field of each round's metrics row.

``output.tensorboard: true`` writes them under ``RUN_DIR/tensorboard/`` as the rounds
finish (``tensorboard --logdir runs/`` shows every run at once). The tag of a scalar is
its ``metrics.jsonl`` key (``test_accuracy``, ``test_loss``, ``train_loss``,
``bytes_up``, ``cum_bytes_up``, ``sim_time``, ``rejected``, ``failed``, ...), its step the
round. Written with ``torch.utils.tensorboard``, which needs the ``tensorboard`` package
(``pip install 'fedsim[tensorboard]'``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fedsim.config import ConfigError

SUBDIR = "tensorboard"


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The fields of a metrics row that TensorBoard can plot: finite numbers, not ``round``."""
    return {k: float(v) for k, v in row.items()
            if k != "round" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class ScalarWriter:
    """Writes each round's scalars as it comes; :meth:`backfill` adds rows it did not see."""

    def __init__(self, run_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ConfigError(f"output.tensorboard needs the tensorboard package: pip install 'fedsim[tensorboard]' "
                              f"({err})") from None
        self.dir = Path(run_dir) / SUBDIR
        self._writer = SummaryWriter(log_dir=str(self.dir))
        self._seen: set[int] = set()

    def round(self, row: dict[str, Any]) -> None:
        step = int(row["round"])
        for tag, value in scalars(row).items():
            self._writer.add_scalar(tag, value, global_step=step)
        self._seen.add(step)
        self._writer.flush()

    def backfill(self, rows: Iterable[dict[str, Any]]) -> None:
        """Rows not written yet (the initial model's round 0 is recorded before the loop)."""
        for row in rows:
            if int(row["round"]) not in self._seen:
                self.round(row)

    def close(self) -> None:
        self._writer.close()
