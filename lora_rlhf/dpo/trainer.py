"""The DPO stage: train the `dpo` adapter (a copy of sft) on K-way rankings against the frozen sft reference.

Rafailov et al. 2023 (arXiv:2305.18290) optimise the policy directly on preferences, the reward model implicit
in the policy's log-ratio to the reference. On the role stack the policy is the `dpo` role and the reference
the `sft` role on the same base: no second model in memory, and the reference is the SFT model itself (not the
bare base, which is what disabling the adapters would give). The `dpo` role is policy-like: an LM adapter with
no head, saved as a plain PEFT folder in adapters/dpo/, so generate, serve, merge and push use it as any other.

The loop is the one SFT and the RM share (train/loop.py): resume, checkpoints/dpo/, metrics/dpo.jsonl, the
non-finite guards, and several processes through the same data-parallel path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from lora_rlhf.data.rankings import load_ranking_splits
from lora_rlhf.data.rows import RowReport
from lora_rlhf.dpo.batching import DPOExample, collate_dpo, sequence_logprobs
from lora_rlhf.dpo.config import DPOConfig
from lora_rlhf.dpo.loss import ranking_dpo_loss
from lora_rlhf.dpo.reference import REFERENCE, attach_reference
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.models.positions import check_lengths
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.paths import RunLayout
from lora_rlhf.rm.batching import scatter_scores
from lora_rlhf.train import distributed
from lora_rlhf.train.loop import BatchLoss, Task, fit

logger = logging.getLogger(__name__)
ROLE = "dpo"
# Figures averaged over pairs (TRL's names), where "loss" is over prompts.
PAIR_FIGURES = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def dpo_loss(stack: RoleStack, batch: dict[str, torch.Tensor], config: DPOConfig, role: str = ROLE) -> BatchLoss:
    """The DPO loss of one batch: the policy's sequence log-probs (with grad) against the reference's."""
    shape = batch["ranks"].shape
    policy = scatter_scores(sequence_logprobs(stack, role, batch), batch["slot"], shape)  # (B, K_max)
    reference = batch.get("reference_logps")
    if reference is None:
        with torch.no_grad(), stack.evaluating():  # the reference is measured without LoRA dropout
            reference = scatter_scores(sequence_logprobs(stack, REFERENCE, batch), batch["slot"], shape)
    out = ranking_dpo_loss(
        policy, reference.to(policy.dtype), batch["ranks"], batch["valid"], config.beta, config.loss_type
    )
    stats = {
        "loss": out.loss.item(),
        "rewards/chosen": out.chosen_rewards.item(),
        "rewards/rejected": out.rejected_rewards.item(),
        "rewards/margins": out.margins.item(),
        "rewards/accuracies": out.accuracies.item(),
        "pairs": float(out.pairs),
        "prompts": float(out.prompts),
    }
    return BatchLoss(out.loss, stats, float(out.prompts))


def evaluate_dpo(stack: RoleStack, examples: list[DPOExample], config: DPOConfig, role: str = ROLE) -> dict[str, float]:
    """Held-out loss (mean over prompts) and the reward figures (means over pairs)."""
    pad, size = stack.tokenizer.pad_token_id, config.train.batch_size
    totals = dict.fromkeys(("loss", *PAIR_FIGURES, "pairs", "prompts"), 0.0)
    for start in range(0, len(examples), size):
        batch = {k: v.to(stack.device) for k, v in collate_dpo(examples[start : start + size], pad).items()}
        s = dpo_loss(stack, batch, config, role).stats
        totals["loss"] += s["loss"] * s["prompts"]
        for key in PAIR_FIGURES:
            totals[key] += s[key] * s["pairs"]
        totals["pairs"] += s["pairs"]
        totals["prompts"] += s["prompts"]
    pairs, prompts = max(totals.pop("pairs"), 1.0), max(totals.pop("prompts"), 1.0)
    return {k: v / (prompts if k == "loss" else pairs) for k, v in totals.items()}


def train_dpo(
    stack: RoleStack, config: DPOConfig, output_dir: Path, *, resume: bool = False, report_to: Sequence[str] = ()
) -> dict[str, float]:
    """Train the `dpo` role; write metrics/dpo.jsonl (and to the `report_to` trackers), checkpoints/dpo/ and
    adapters/dpo/. `config`'s unset data keys are RMConfig()'s (the pipeline fills in the recipe's rm section).

    Returns train_loss, train_accuracy, held-out loss and reward figures (when there is held-out data),
    prompts, dropped (bad rows skipped), truncated and no_signal_pairs (as the RM stage counts them).
    """
    output_dir = Path(output_dir)
    config = config.resolved()
    check_lengths(stack.base_model, {"dpo.max_length": config.max_length})
    if not stack.has_role(REFERENCE):
        raise LoraRlhfError(
            "dpo needs the sft role (the policy starts as its copy and it is the reference): train sft first"
        )
    train, held, report = _load_rankings(stack, config)
    if config.precompute_reference:
        splits = attach_reference(
            stack, {"train": train, "eval": held}, config.train.batch_size, RunLayout(output_dir).checkpoints("dpo")
        )
        train, held = splits["train"], splits["eval"]
    _create_dpo_role(stack)
    pad = stack.tokenizer.pad_token_id
    task = Task(
        "dpo",
        ROLE,
        train,
        lambda items: collate_dpo(items, pad),
        lambda batch: dpo_loss(stack, batch, config),
        (lambda: evaluate_dpo(stack, held, config)) if held else None,
        summed=("pairs", "prompts"),
    )
    figures = fit(stack, task, config.train, output_dir, resume=resume, report_to=report_to)
    if distributed.is_main():
        stack.save_role(ROLE, RunLayout(output_dir).adapter(ROLE))
    summary = {
        "train_loss": figures.get("loss", float("nan")),
        "train_accuracy": figures.get("rewards/accuracies", float("nan")),
        "prompts": len(train),
        "dropped": report.dropped,
        "truncated": report.truncated,
        "no_signal_pairs": report.no_signal_pairs,
    }
    if "eval_loss" in figures:
        summary["eval_loss"] = figures["eval_loss"]
        summary["accuracy"] = figures["eval_rewards/accuracies"]  # held-out: the implicit reward orders the pair
        summary["margin"] = figures["eval_rewards/margins"]
    return summary


def _load_rankings(stack: RoleStack, config: DPOConfig) -> tuple[list[DPOExample], list[DPOExample], RowReport]:
    train, held, report = load_ranking_splits(
        config.data,
        config.eval_data,
        stack.tokenizer,
        config.max_length,
        ties=config.ties,
        on_bad_row=config.on_bad_row,
        eval_fraction=config.eval_fraction,
        seed=config.train.seed,
        section="dpo",  # its own max_length and ties, named in a bad row's remedy
    )
    return [DPOExample(e) for e in train], [DPOExample(e) for e in held], report


def _create_dpo_role(stack: RoleStack) -> None:
    """DPO starts the policy from the SFT model it is measured against (Rafailov et al. §4): at step 0 every
    log-ratio is 0 and the loss log 2 (K = 2)."""
    if not stack.has_role(ROLE):
        stack.copy_role(REFERENCE, ROLE)
