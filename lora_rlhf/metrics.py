"""Metrics as JSON lines: one object per logged step, "step" first (docs/design.md, "Metric names")."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lora_rlhf.tracking import Trackers


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible rather than invalid
    return value


class MetricsWriter:
    """Appends one JSON object per `log` call to `path`, flushed at once so a crash loses nothing.

    On resume from step S, rows logged after S by the interrupted run are dropped first, so the
    file reads as if the run had never stopped.

    With `enabled=False` (every process but the main one of a multi-process run) nothing is written.
    `trackers` (the recipe's `report_to`, lora_rlhf.tracking) receive every row too; `close` ends them.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        resume_step: int | None = None,
        enabled: bool = True,
        trackers: Trackers | None = None,
    ) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.trackers = trackers
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [row for row in read_metrics(self.path) if row["step"] <= resume_step]
            self.path.write_text("".join(json.dumps(row) + "\n" for row in kept))

    def log(self, step: int, **figures: Any) -> dict[str, Any]:
        row = {"step": int(step), **{k: _plain(v) for k, v in figures.items()}}
        if not self.enabled:
            return row
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.trackers is not None:
            self.trackers.log(step, row)
        return row

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a metrics file (an empty list if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
