"""Language-modelling loss of each model on held-out plain text: the "alignment tax".

InstructGPT §4.2 (and the PPO-ptx objective, eq. 2) reports that RLHF fine-tuning can cost performance on
ordinary language modelling; a rising NLL on neutral text from base -> sft -> ppo is that tax.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from lora_rlhf.data.batching import pad_left
from lora_rlhf.data.rows import parse_rows, text_field
from lora_rlhf.data.sources import DatasetSpec, load_rows
from lora_rlhf.models import forward
from lora_rlhf.models.roles import RoleStack


def token_weighted_mean(nlls: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> float:
    """Mean NLL per token over batches of different shapes, every real token weighing the same.

    Args:
        nlls: per batch, (B_i, T_i) negative log-likelihood of each target token (anything, even NaN, at padding).
        masks: per batch, (B_i, T_i) 1 where the target token is real.
    Returns:
        sum of NLL over real tokens / number of real tokens; NaN when there is no real token.
    """
    total, count = 0.0, 0.0
    for nll, mask in zip(nlls, masks, strict=True):
        keep = mask.bool()
        # torch.where rather than nll * mask: padding may hold NaN (fully masked attention rows).
        total += float(torch.where(keep, nll.double(), 0.0).sum())
        count += float(keep.sum())
    return total / count if count else float("nan")


def load_texts(spec: DatasetSpec, tokenizer, max_length: int) -> list[list[int]]:
    """Token ids of every {"text"} row (special tokens added, truncated to `max_length`); bad rows skipped."""
    texts, report = parse_rows(load_rows(spec), lambda row: text_field(row, "text"), spec.display(), "skip")
    report.log()
    encoded = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_length).input_ids
    return [ids for ids in encoded if len(ids) >= 2]  # one token has nothing to predict


@torch.no_grad()
def role_lm_loss(stack: RoleStack, role: str, sequences: Sequence[Sequence[int]], batch_size: int) -> float:
    """Token-weighted mean NLL of `role` on `sequences` (each token predicted from the ones before it)."""
    nlls, masks = [], []
    for begin in range(0, len(sequences), batch_size):
        ids, mask = pad_left(sequences[begin : begin + batch_size], stack.tokenizer.pad_token_id)
        ids, mask = ids.to(stack.device), mask.to(stack.device)
        logprobs = forward.logprobs(stack, role, ids, mask).logprobs  # (B, T-1), target t+1 from prefix <= t
        # A target counts if it and its predecessor are real: a left-padded row's first token has no prefix.
        nlls.append(-logprobs)
        masks.append(mask[:, 1:] * mask[:, :-1])
    return token_weighted_mean(nlls, masks)


def lm_losses(
    stack: RoleStack, models: Mapping[str, str], spec: DatasetSpec, max_length: int, batch_size: int
) -> dict[str, float]:
    """{"base": nll, "sft": nll, "ppo": nll} for every model ({report name: role}) on the rows of `spec`."""
    sequences = load_texts(spec, stack.tokenizer, max_length)
    if not sequences:
        return {}
    return {name: role_lm_loss(stack, role, sequences, batch_size) for name, role in models.items()}
