"""`report_to` (issue 13): a stage's metrics rows also reach accelerate's trackers; TensorBoard's event file,
read back with TensorBoard's own reader, holds the same figures as metrics/<stage>.jsonl."""

from __future__ import annotations

import pytest

from lora_rlhf.cli.main import main
from lora_rlhf.config.recipe import RECIPES, load_recipe
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.metrics import read_metrics

TINY = str(RECIPES / "tiny-test.yaml")


def test_sft_figures_reach_a_tensorboard_event_file(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["sft", "--config", TINY, "--output-dir", str(tmp_path), "report_to=[tensorboard]"]) == 0
    events = EventAccumulator(str(tmp_path / "trackers" / "sft"))
    events.Reload()
    rows = read_metrics(tmp_path / "metrics" / "sft.jsonl")
    train = [r for r in rows if "split" not in r]
    held = [r for r in rows if r.get("split") == "eval"]
    assert train and held
    logged = {e.step: e.value for e in events.Scalars("loss")}
    assert logged == pytest.approx({r["step"]: r["loss"] for r in train})
    assert [e.step for e in events.Scalars("eval/loss")] == [r["step"] for r in held]


def test_no_tracker_named_means_no_tracker_files(tmp_path):
    assert main(["sft", "--config", TINY, "--output-dir", str(tmp_path), "sft.train.max_steps=1"]) == 0
    assert (tmp_path / "metrics" / "sft.jsonl").is_file()
    assert not (tmp_path / "trackers").exists()


def test_an_unknown_tracker_is_refused_in_one_line():
    with pytest.raises(LoraRlhfError, match="report_to: unknown tracker 'tensorbord'; expected some of tensorboard"):
        load_recipe(TINY, ["report_to=[tensorbord]"])
