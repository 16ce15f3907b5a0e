"""Responses of one role to a list of prompts, kept as token ids for scoring and KL."""

from __future__ import annotations

import dataclasses

import torch

from lora_rlhf.models import engine
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.models.sequences import until_stop


@dataclasses.dataclass
class Responses:
    texts: list[str]  # decoded responses, special tokens stripped
    input_ids: list[torch.Tensor]  # per prompt, (T_i,) prompt + response ids, no padding
    response_start: list[int]  # per prompt, index of the first response token in input_ids[i]

    def rows(self, indices: list[int]) -> Responses:
        """The responses at `indices`, in that order."""
        return Responses(
            [self.texts[i] for i in indices],
            [self.input_ids[i] for i in indices],
            [self.response_start[i] for i in indices],
        )


@torch.no_grad()
def generate_responses(
    stack: RoleStack,
    role: str,
    prompt_texts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    temperature: float = 0.0,
) -> Responses:
    """Generate `role`'s response to every rendered prompt, `batch_size` prompts at a time."""
    tokenizer = stack.tokenizer
    texts, ids, starts = [], [], []
    # Sampled from softmax(logits / T) alone (models/sequences.py): the distribution the KL is measured on,
    # the one PPO trained and best-of-N draws from; it stops at every end-of-response id, as rollouts do, and
    # a row leaves the batch at its stop (models/engine.py).
    stops = stack.eos_ids()
    for begin in range(0, len(prompt_texts), batch_size):
        batch = tokenizer(
            prompt_texts[begin : begin + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(stack.device)
        out = engine.sample(
            stack, role, batch.input_ids, batch.attention_mask, max_new_tokens=max_new_tokens, temperature=temperature
        ).sequences
        width = batch.input_ids.shape[1]
        for row, mask in zip(out, batch.attention_mask):
            prompt = row[:width][mask.bool()]
            response, _ = until_stop(row[width:], stops, tokenizer.pad_token_id)
            texts.append(tokenizer.decode(response, skip_special_tokens=True).strip())
            ids.append(torch.cat([prompt, response]).cpu())
            starts.append(len(prompt))
    return Responses(texts, ids, starts)
