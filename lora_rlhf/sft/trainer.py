"""The SFT stage (InstructGPT §3.5): train the `sft` role on demonstrations, with a held-out loss (sft/loss.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from lora_rlhf.data.demonstrations import SFTExample, load_sft_examples
from lora_rlhf.data.rows import RowReport
from lora_rlhf.data.split import hold_out
from lora_rlhf.models.positions import check_lengths
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.paths import RunLayout
from lora_rlhf.sft.config import SFTConfig
from lora_rlhf.sft.loss import collate_sft, sft_loss
from lora_rlhf.train import distributed
from lora_rlhf.train.loop import Task, fit

logger = logging.getLogger(__name__)


def evaluate_sft(stack: RoleStack, examples: list[SFTExample], batch_size: int, role: str = "sft") -> dict[str, float]:
    """Held-out loss: mean NLL per response token over all of `examples`."""
    pad = stack.tokenizer.pad_token_id
    total, tokens = 0.0, 0.0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(stack.device) for k, v in collate_sft(examples[start : start + batch_size], pad).items()}
        out = sft_loss(stack, batch, role)
        total += out.stats["loss"] * out.stats["tokens"]
        tokens += out.stats["tokens"]
    return {"loss": total / max(tokens, 1.0)}


def train_sft(
    stack: RoleStack, config: SFTConfig, output_dir: Path, *, resume: bool = False, report_to: Sequence[str] = ()
) -> dict[str, float]:
    """Train the `sft` role on `config.data`; write metrics/sft.jsonl (and to the `report_to` trackers),
    checkpoints/sft/, adapters/sft/.

    Returns train_loss, eval_loss (when there is held-out data), examples, dropped (bad rows skipped)
    and truncated (rows whose response was cut to fit max_length).
    """
    output_dir = Path(output_dir)
    check_lengths(stack.base_model, {"sft.max_length": config.max_length})
    train, held, report = _load_demonstrations(stack, config)
    if not stack.has_role("sft"):
        torch.manual_seed(config.train.seed)  # LoRA's random A is part of the run: same seed, same adapter
        stack.add_role("sft", config.lora)
    pad, batch_size = stack.tokenizer.pad_token_id, config.train.batch_size
    task = Task(
        "sft",
        "sft",
        train,
        lambda items: collate_sft(items, pad),
        lambda batch: sft_loss(stack, batch),
        (lambda: evaluate_sft(stack, held, batch_size)) if held else None,
        summed=("tokens",),
    )
    figures = fit(stack, task, config.train, output_dir, resume=resume, report_to=report_to)
    if distributed.is_main():
        stack.save_role("sft", RunLayout(output_dir).adapter("sft"))
    summary = {
        "train_loss": figures.get("loss", float("nan")),
        "examples": len(train),
        "dropped": report.dropped,
        "truncated": report.truncated,
    }
    if "eval_loss" in figures:
        summary["eval_loss"] = figures["eval_loss"]
    return summary


def _load_demonstrations(stack: RoleStack, config: SFTConfig) -> tuple[list[SFTExample], list[SFTExample], RowReport]:
    examples, report = load_sft_examples(config.data, stack.tokenizer, config.max_length, config.on_bad_row)
    report.log()
    if config.eval_data is not None:
        held, held_report = load_sft_examples(config.eval_data, stack.tokenizer, config.max_length, config.on_bad_row)
        held_report.log()
        return examples, held, report
    train, held = hold_out(examples, config.eval_fraction, config.train.seed)
    return train, held, report
