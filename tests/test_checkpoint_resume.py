"""Resume survives torn checkpoints (issue 12): each checkpoint carries a manifest written last; resume takes
the newest one that verifies, says which it skipped and why, removes what interrupted writes left, and
--resume with nothing to resume is refused in one line instead of quietly starting from scratch."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from lora_rlhf.cli.main import main
from lora_rlhf.config.recipe import RECIPES
from lora_rlhf.data.sources import DatasetSpec
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.metrics import read_metrics
from lora_rlhf.models.base import BaseModelConfig
from lora_rlhf.models.lora import LoraSettings
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.sft.config import SFTConfig
from lora_rlhf.sft.trainer import train_sft
from lora_rlhf.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from lora_rlhf.train.config import OptimConfig
from lora_rlhf.train.manifest import MANIFEST_NAME

TINY = str(RECIPES / "tiny-test.yaml")
DEMOS = [
    {"prompt": "sort the numbers 3 1 2", "completion": "1 2 3"},
    {"prompt": "reverse the words hello world", "completion": "world hello"},
    {"prompt": "answer with yes or no", "completion": "yes"},
    {"prompt": "count letters", "completion": "five"},
] * 2


@pytest.fixture()
def stack(tiny_llama) -> RoleStack:
    stack = RoleStack.load(BaseModelConfig(name_or_path=tiny_llama))
    stack.add_role("sft", LoraSettings(r=4, alpha=8))
    return stack


def _save(stack: RoleStack, folder: Path, step: int, *, keep: int = 5) -> Path:
    optimizer = torch.optim.AdamW(stack.role_parameters("sft"), lr=1e-3)
    return save_checkpoint(folder, step, stack, ["sft"], {"optimizer": optimizer}, {"position": step}, keep=keep)


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def test_every_checkpoint_lists_its_files_with_sizes_and_hashes(stack, tmp_path):
    path = _save(stack, tmp_path, 2)
    files = json.loads((path / MANIFEST_NAME).read_text())["files"]
    assert {"state.json", "rng.pt", "optim-optimizer.pt", "roles/sft/adapter_model.safetensors"} <= set(files)
    assert files["rng.pt"]["size"] == (path / "rng.pt").stat().st_size and len(files["rng.pt"]["sha256"]) == 64


@pytest.mark.parametrize("damaged", ["optim-optimizer.pt", "roles/sft/adapter_model.safetensors", "state.json"])
def test_resume_skips_a_torn_newest_checkpoint_and_says_why(stack, tmp_path, caplog, damaged):
    older, newer = _save(stack, tmp_path, 2), _save(stack, tmp_path, 4)
    _truncate(newer / damaged)
    with caplog.at_level(logging.WARNING, logger="lora_rlhf.train.checkpoint"):
        assert latest_checkpoint(tmp_path) == older
    assert "step-00000004" in caplog.text and damaged in caplog.text
    optimizer = torch.optim.AdamW(stack.role_parameters("sft"), lr=1e-3)
    assert load_checkpoint(older, stack, ["sft"], {"optimizer": optimizer})["step"] == 2


def test_a_checkpoint_missing_a_listed_file_is_skipped(stack, tmp_path, caplog):
    older, newer = _save(stack, tmp_path, 2), _save(stack, tmp_path, 4)
    (newer / "rng.pt").unlink()
    with caplog.at_level(logging.WARNING):
        assert latest_checkpoint(tmp_path) == older
    assert "rng.pt is missing" in caplog.text


def test_checkpoints_from_before_manifests_are_verified_by_loading(stack, tmp_path, caplog):
    older, newer = _save(stack, tmp_path, 2), _save(stack, tmp_path, 4)
    for path in (older, newer):
        (path / MANIFEST_NAME).unlink()
    assert latest_checkpoint(tmp_path) == newer  # loads cleanly: still resumable
    _truncate(newer / "optim-optimizer.pt")
    with caplog.at_level(logging.WARNING):
        assert latest_checkpoint(tmp_path) == older
    assert "optim-optimizer.pt does not load" in caplog.text


def test_no_resumable_checkpoint_is_an_error_not_a_fresh_start(stack, tmp_path):
    _truncate(_save(stack, tmp_path, 2) / "rng.pt")
    with pytest.raises(LoraRlhfError, match="no checkpoint in .* can be resumed: all 1 are damaged"):
        latest_checkpoint(tmp_path)
    assert latest_checkpoint(tmp_path / "nothing-here") is None


def test_folders_of_interrupted_writes_are_removed(stack, tmp_path):
    kept = _save(stack, tmp_path, 2)
    for name in (".step-00000004.tmp-k2j4l1", ".step-00000002.old-1234"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "rng.pt").write_bytes(b"half")
    assert latest_checkpoint(tmp_path) == kept
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept.name]
    (tmp_path / ".step-00000006.tmp-abc").mkdir()
    _save(stack, tmp_path, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000002", "step-00000004"]


def test_saving_after_resuming_from_an_older_checkpoint_drops_the_abandoned_later_ones(stack, tmp_path):
    for step in (2, 4, 6):
        _save(stack, tmp_path, step)
    _save(stack, tmp_path, 3, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]


def test_sft_resumes_from_the_newest_intact_checkpoint_and_matches_an_uninterrupted_run(tiny_llama, tmp_path, caplog):
    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps(r) + "\n" for r in DEMOS))
    optim = OptimConfig(
        learning_rate=5e-3,
        batch_size=2,
        max_steps=6,
        logging_steps=1,
        eval_steps=100,
        save_steps=2,
        keep_checkpoints=3,
        warmup_ratio=0.0,
        scheduler="linear",
    )
    config = SFTConfig(
        data=DatasetSpec(str(demos)),
        eval_fraction=0.25,
        max_length=64,
        train=optim,
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
    )
    whole = RoleStack.load(BaseModelConfig(name_or_path=tiny_llama))
    train_sft(whole, config, tmp_path / "whole")
    cut = tmp_path / "cut"
    for step in ("step-00000002", "step-00000004"):
        shutil.copytree(tmp_path / "whole" / "checkpoints" / "sft" / step, cut / "checkpoints" / "sft" / step)
    (cut / "metrics").mkdir()
    rows = [row for row in read_metrics(tmp_path / "whole" / "metrics" / "sft.jsonl") if row["step"] <= 4]
    (cut / "metrics" / "sft.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    _truncate(cut / "checkpoints" / "sft" / "step-00000004" / "roles" / "sft" / "adapter_model.safetensors")
    resumed = RoleStack.load(BaseModelConfig(name_or_path=tiny_llama))
    with caplog.at_level(logging.INFO):
        train_sft(resumed, config, cut, resume=True)
    assert "skipping damaged checkpoint" in caplog.text and "step-00000004" in caplog.text
    assert "step 2)" in caplog.text  # "sft: resuming from .../step-00000002 (step 2)"
    pairs = zip(resumed.role_parameters("sft"), whole.role_parameters("sft"), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert read_metrics(cut / "metrics" / "sft.jsonl") == read_metrics(tmp_path / "whole" / "metrics" / "sft.jsonl")


@pytest.mark.parametrize("command", ["sft", "rm", "pipeline"])
def test_resume_with_nothing_to_resume_is_one_line(command, tmp_path, capsys):
    run = tmp_path / "run"
    assert main([command, "--config", TINY, "--output-dir", str(run), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"lora-rlhf {command}: error: --resume: nothing to resume in {run}") and "\n" not in err
    assert not run.exists()


def test_a_folder_left_by_an_interrupted_first_write_is_nothing_to_resume(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints" / "sft" / ".step-00000002.tmp-x1y2").mkdir(parents=True)
    assert main(["sft", "--config", TINY, "--output-dir", str(run), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
