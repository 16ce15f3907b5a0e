"""Responses of one role to a list of prompts, kept as token ids for scoring and KL."""

from __future__ import annotations

import dataclasses

import torch

from lora_rlhf.models.roles import RoleStack
from lora_rlhf.ppo.rollout import NEUTRAL_SAMPLING


@dataclasses.dataclass
class Responses:
    texts: list[str]  # decoded responses, special tokens stripped
    input_ids: list[torch.Tensor]  # per prompt, (T_i,) prompt + response ids, no padding
    response_start: list[int]  # per prompt, index of the first response token in input_ids[i]


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
    # The model's own generation defaults (top_k 50, a repetition penalty, ...) would score a different
    # distribution than the one PPO trained and best-of-N samples from; turn them off as the rollout does.
    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0, **NEUTRAL_SAMPLING}
    else:  # the sampling-only flags would draw "not valid" warnings from a greedy generate
        sampling = {"do_sample": False, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
    for begin in range(0, len(prompt_texts), batch_size):
        batch = tokenizer(
            prompt_texts[begin : begin + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(stack.device)
        out = stack.generate(role, batch.input_ids, batch.attention_mask, max_new_tokens=max_new_tokens, **sampling)
        width = batch.input_ids.shape[1]
        for row, mask in zip(out, batch.attention_mask):
            prompt = row[:width][mask.bool()]
            response = _until_eos(row[width:], tokenizer)
            texts.append(tokenizer.decode(response, skip_special_tokens=True).strip())
            ids.append(torch.cat([prompt, response]).cpu())
            starts.append(len(prompt))
    return Responses(texts, ids, starts)


def _until_eos(response: torch.Tensor, tokenizer) -> torch.Tensor:
    """Response ids up to and including the first EOS (the rest is padding from batched generation)."""
    eos = tokenizer.eos_token_id
    stops = (response == eos).nonzero()
    if len(stops):
        return response[: int(stops[0]) + 1]
    pad = tokenizer.pad_token_id
    if pad is not None and pad != eos:
        keep = (response != pad).nonzero()
        return response[: int(keep[-1]) + 1] if len(keep) else response[:0]
    return response
