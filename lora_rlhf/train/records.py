"""The metrics writer a stage opens: OUTPUT_DIR/metrics/<stage>.jsonl and the `report_to` trackers, written by the
main process alone (the others of a multi-process run log nothing)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lora_rlhf.metrics import MetricsWriter
from lora_rlhf.paths import RunLayout
from lora_rlhf.tracking import Trackers
from lora_rlhf.train import distributed


def open_metrics(
    output_dir: Path, stage: str, *, resume_step: int | None = None, report_to: Sequence[str] = ()
) -> MetricsWriter:
    """The writer of OUTPUT_DIR/metrics/<stage>.jsonl and the `report_to` trackers: the main process's alone."""
    main = distributed.is_main()
    trackers = Trackers(report_to, stage, Path(output_dir)) if main and report_to else None
    return MetricsWriter(RunLayout(output_dir).metrics(stage), resume_step=resume_step, enabled=main, trackers=trackers)
