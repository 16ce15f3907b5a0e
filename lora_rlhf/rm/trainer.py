"""The reward-model stage: train `reward` (adapter + scalar head) on K-way rankings, then centre it."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from lora_rlhf.data.rankings import RankingExample, load_ranking_splits
from lora_rlhf.data.rows import RowReport
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.models import forward
from lora_rlhf.models.base import gradient_checkpointing_on
from lora_rlhf.models.positions import check_lengths
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.paths import RunLayout
from lora_rlhf.rm.batching import collate_rankings, collate_shared_prompts, scatter_scores
from lora_rlhf.rm.bias import center_on_demonstrations
from lora_rlhf.rm.config import RMConfig
from lora_rlhf.rm.loss import ranking_loss
from lora_rlhf.train import distributed
from lora_rlhf.train.loop import BatchLoss, Task, check_finite_role, fit

logger = logging.getLogger(__name__)
ROLE = "reward"


def rm_loss(stack: RoleStack, batch: dict[str, torch.Tensor], role: str = ROLE) -> BatchLoss:
    """Score the batch's N responses in ONE forward pass, then apply the ranking loss per prompt (§3.5).

    A batch from `collate_shared_prompts` encodes each prompt once for its K responses; one from
    `collate_rankings` encodes every prompt + response row in full.
    """
    if "prompt_ids" in batch:
        keys = ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "prompt_index")
        flat = forward.prefix_rewards(stack, role, *(batch[k] for k in keys))  # (N,)
    else:
        flat = forward.rewards(stack, role, batch["input_ids"], batch["attention_mask"])  # (N,)
    scores = scatter_scores(flat, batch["slot"], batch["ranks"].shape)  # (B, K_max)
    out = ranking_loss(scores, batch["ranks"], batch["valid"])
    stats = {
        "loss": out.loss.item(),
        "accuracy": out.accuracy.item(),
        "margin": out.margin.item(),
        "pairs": float(out.pairs),
        "prompts": float(len(batch["ranks"])),
    }
    return BatchLoss(out.loss, stats, float(out.prompts))


def ranking_collator(stack: RoleStack, share_prompts: bool = True) -> Callable[[list[RankingExample]], dict]:
    """Batches that encode each prompt once (`collate_shared_prompts`) where the model can: not under gradient
    checkpointing, which turns the KV cache off while training; otherwise full rows (`collate_rankings`)."""
    pad = stack.tokenizer.pad_token_id
    checkpointing = gradient_checkpointing_on(stack.base_model)
    if share_prompts and not checkpointing:
        return lambda items: collate_shared_prompts(items, pad)
    return lambda items: collate_rankings(items, pad)


def evaluate_rankings(
    stack: RoleStack, examples: list[RankingExample], batch_size: int, role: str = ROLE, share_prompts: bool = True
) -> dict[str, float]:
    """Held-out loss (mean over prompts), pairwise accuracy and mean margin (means over pairs)."""
    totals = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0, "pairs": 0.0, "prompts": 0.0}
    collate = ranking_collator(stack, share_prompts)
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(stack.device) for k, v in collate(examples[start : start + batch_size]).items()}
        s = rm_loss(stack, batch, role).stats
        totals["loss"] += s["loss"] * s["prompts"]
        totals["accuracy"] += s["accuracy"] * s["pairs"]
        totals["margin"] += s["margin"] * s["pairs"]
        totals["pairs"] += s["pairs"]
        totals["prompts"] += s["prompts"]
    pairs, prompts = max(totals["pairs"], 1.0), max(totals["prompts"], 1.0)
    return {
        "loss": totals["loss"] / prompts,
        "accuracy": totals["accuracy"] / pairs,
        "margin": totals["margin"] / pairs,
    }


def train_reward_model(
    stack: RoleStack, config: RMConfig, output_dir: Path, *, resume: bool = False, report_to: Sequence[str] = ()
) -> dict[str, float]:
    """Train the `reward` role; write metrics/rm.jsonl (and to the `report_to` trackers), checkpoints/rm/,
    adapters/reward/ (+ head.safetensors).

    Returns train_loss, held-out accuracy / margin / eval_loss (when there is held-out data), prompts,
    dropped (bad rows skipped), truncated (rows with a response cut to fit), no_signal_pairs (ranked pairs left
    out because their responses were identical as the model saw them) and bias_shift.
    """
    output_dir = Path(output_dir)
    check_lengths(stack.base_model, {"rm.max_length": config.max_length})
    train, held, report = _load_rankings(stack, config)
    _create_reward_role(stack, config)
    batch_size, share = config.train.batch_size, config.share_prompts
    task = Task(
        "rm",
        ROLE,
        train,
        ranking_collator(stack, share),
        lambda batch: rm_loss(stack, batch),
        (lambda: evaluate_rankings(stack, held, batch_size, share_prompts=share)) if held else None,
        head_learning_rate=config.resolved_head_learning_rate,
        summed=("pairs", "prompts"),
    )
    figures = fit(stack, task, config.train, output_dir, resume=resume, report_to=report_to)
    shift = center_on_demonstrations(
        stack,
        config.demonstrations,
        max_length=config.max_length,
        max_examples=config.bias_examples,
        batch_size=batch_size * 2,
        on_bad_row=config.on_bad_row,
    )
    if not math.isfinite(shift):
        raise LoraRlhfError(f"rm stopped after training: the bias shift is {shift}, not finite; no adapter was saved")
    check_finite_role(stack, ROLE, "rm", "after centring the reward on the demonstrations")
    # Every process centred on the same demonstrations; the main one's head is the one saved, so the others
    # take it (GPU kernels need not give bit-identical sums on every device).
    distributed.broadcast_parameters(stack.heads[ROLE].parameters())
    if distributed.is_main():
        stack.save_role(ROLE, RunLayout(output_dir).adapter(ROLE))
    summary = {
        "train_loss": figures.get("loss", float("nan")),
        "train_accuracy": figures.get("accuracy", float("nan")),
        "prompts": len(train),
        "dropped": report.dropped,
        "truncated": report.truncated,
        "no_signal_pairs": report.no_signal_pairs,  # ranked apart but identical as the model saw them (issue 29)
        "bias_shift": shift,
    }
    summary.update(
        {("eval_loss" if k == "eval_loss" else k[5:]): v for k, v in figures.items() if k.startswith("eval_")}
    )
    return summary


def _load_rankings(stack: RoleStack, config: RMConfig) -> tuple[list[RankingExample], list[RankingExample], RowReport]:
    return load_ranking_splits(
        config.data,
        config.eval_data,
        stack.tokenizer,
        config.max_length,
        ties=config.ties,
        on_bad_row=config.on_bad_row,
        eval_fraction=config.eval_fraction,
        seed=config.train.seed,
    )


def _create_reward_role(stack: RoleStack, config: RMConfig) -> None:
    """InstructGPT starts the RM from the SFT model (§3.5, "the SFT model with the final unembedding removed")."""
    if stack.has_role(ROLE):
        return
    torch.manual_seed(config.train.seed)  # the head (and a fresh LoRA A) start random: same seed, same start
    if config.init == "sft":
        if not stack.has_role("sft"):
            raise LoraRlhfError("rm.init: 'sft' needs the sft role: train sft first, or set rm.init: fresh")
        stack.copy_role("sft", ROLE)
    else:
        stack.add_role(ROLE, config.lora)
