"""SFT's loss (InstructGPT §3.5): next-token cross-entropy on the demonstrated response, the prompt masked
out, and the right-padded batches it reads. PPO-ptx reuses both for its language-modelling term (eq. 2).
"""

from __future__ import annotations

import torch

from lora_rlhf.data.demonstrations import IGNORE_INDEX, SFTExample
from lora_rlhf.models import forward
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.train.loop import BatchLoss


def collate_sft(examples: list[SFTExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: input_ids, attention_mask and labels (IGNORE_INDEX on padding)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
        mask[i, : len(e.input_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def target_mask(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) labels -> (B, T-1) float, 1 where the next token carries loss (aligned with next-token log-probs)."""
    return (labels[:, 1:] != IGNORE_INDEX).float()


def sft_loss(stack: RoleStack, batch: dict[str, torch.Tensor], role: str = "sft") -> BatchLoss:
    """Mean negative log-likelihood of the response tokens (labels != IGNORE_INDEX), chunked over the vocabulary."""
    logprobs = forward.logprobs(stack, role, batch["input_ids"], batch["attention_mask"]).logprobs  # (B, T-1)
    mask = target_mask(batch["labels"])
    tokens = mask.sum().clamp(min=1)
    loss = -(logprobs * mask).sum() / tokens
    return BatchLoss(loss, {"loss": loss.item(), "tokens": float(tokens)}, float(tokens))
