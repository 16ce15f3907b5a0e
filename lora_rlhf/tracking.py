"""Experiment trackers (`report_to` in a recipe, issue 13): each stage's figures also go to accelerate's trackers.

metrics/<stage>.jsonl stays the record of a run; a tracker is a view of the same rows (TensorBoard, W&B,
Trackio, MLflow, ...). accelerate's tracker classes do the work; they run on the main process only, as
the metrics writer does. A tracker that keeps files (TensorBoard) writes under OUTPUT_DIR/trackers/<stage>/.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.paths import RunLayout

# accelerate 1.15's trackers (accelerate.tracking.LOGGER_TYPE_TO_CLASS), by the name a recipe gives.
KNOWN_TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab")


def check_report_to(names: Sequence[str]) -> None:
    """One-line error for a tracker accelerate does not know, or one named twice (cheap: imports nothing)."""
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise LoraRlhfError(f"report_to: {names!r} must be a list of tracker names, e.g. [tensorboard]")
    for name in names:
        if name not in KNOWN_TRACKERS:
            raise LoraRlhfError(f"report_to: unknown tracker {name!r}; expected some of {', '.join(KNOWN_TRACKERS)}")
    if len(set(names)) != len(names):
        raise LoraRlhfError(f"report_to: {list(names)!r} names a tracker twice")


class Trackers:
    """The trackers named in `report_to`, started for one stage; `log` sends one metrics row to each."""

    def __init__(self, names: Sequence[str], stage: str, output_dir: Path) -> None:
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

        available = {str(t) for t in get_available_trackers()}
        missing = [n for n in names if n not in available]
        if missing:
            raise LoraRlhfError(f"report_to: {missing[0]!r} is not installed here (pip install {missing[0]})")
        self.trackers = []
        for name in names:
            cls = LOGGER_TYPE_TO_CLASS[name]
            if cls.requires_logging_directory:
                tracker = cls(stage, str(RunLayout(output_dir).trackers))
            else:
                tracker = cls(stage)
            tracker.start()
            self.trackers.append(tracker)

    def log(self, step: int, row: Mapping[str, Any]) -> None:
        """A metrics row's numbers; a held-out row's (`"split": "eval"`) under `eval/<name>`."""
        prefix = f"{row['split']}/" if isinstance(row.get("split"), str) else ""
        values = {
            f"{prefix}{k}": v
            for k, v in row.items()
            if k not in ("step", "split") and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
