"""Batches of K-way rankings: every response of every prompt as one row, so each is scored exactly once."""

from __future__ import annotations

import torch

from lora_rlhf.data.batching import pad_left
from lora_rlhf.data.rankings import RankingExample


def collate_rankings(examples: list[RankingExample], pad_id: int) -> dict[str, torch.Tensor]:
    """B rankings with K_b responses each -> one left-padded batch of the N = sum K_b sequences.

    Returns:
        input_ids, attention_mask: (N, T) prompt + response, left-padded (the reward is read at the last token).
        ranks: (B, K_max) rank of each response, 0 = best; 0 in padding slots.
        valid: (B, K_max) bool, False for the padding slots of prompts with K_b < K_max.
        slot: (N,) each sequence's flat position b * K_max + k in the (B, K_max) grid.
    """
    k_max = max(len(e.response_ids) for e in examples)
    sequences, slots = [], []
    ranks = torch.zeros((len(examples), k_max), dtype=torch.long)
    valid = torch.zeros((len(examples), k_max), dtype=torch.bool)
    for b, example in enumerate(examples):
        for k, response in enumerate(example.response_ids):
            sequences.append(example.prompt_ids + response)
            slots.append(b * k_max + k)
        ranks[b, : len(example.ranks)] = torch.tensor(example.ranks)
        valid[b, : len(example.ranks)] = True
    ids, mask = pad_left(sequences, pad_id)
    return {"input_ids": ids, "attention_mask": mask, "ranks": ranks, "valid": valid, "slot": torch.tensor(slots)}


def collate_shared_prompts(examples: list[RankingExample], pad_id: int) -> dict[str, torch.Tensor]:
    """B rankings -> each prompt once and its N = sum K_b responses apart, for `RoleStack.prefix_rewards`.

    The prompt of a ranking is encoded once and its K responses continue from its KV cache, so a batch
    costs sum(P_b + sum_k R_bk) tokens instead of sum_k (P_b + R_bk) (InstructGPT §3.5 scores the K
    responses of a prompt as one batch element; here the prompt itself is computed once too).

    Returns:
        prompt_ids, prompt_mask: (B, P) the prompts, left-padded.
        response_ids, response_mask: (N, R) the responses, right-padded.
        prompt_index: (N,) the prompt row of each response.
        ranks, valid, slot: as `collate_rankings`.
    """
    k_max = max(len(e.response_ids) for e in examples)
    prompt_ids, prompt_mask = pad_left([e.prompt_ids for e in examples], pad_id)
    responses = [(b, k, r) for b, e in enumerate(examples) for k, r in enumerate(e.response_ids)]
    width = max(len(r) for _, _, r in responses)
    response_ids = torch.full((len(responses), width), pad_id, dtype=torch.long)
    response_mask = torch.zeros((len(responses), width), dtype=torch.long)
    for n, (_, _, response) in enumerate(responses):
        response_ids[n, : len(response)] = torch.as_tensor(response, dtype=torch.long)
        response_mask[n, : len(response)] = 1
    ranks = torch.zeros((len(examples), k_max), dtype=torch.long)
    valid = torch.zeros((len(examples), k_max), dtype=torch.bool)
    for b, example in enumerate(examples):
        ranks[b, : len(example.ranks)] = torch.tensor(example.ranks)
        valid[b, : len(example.ranks)] = True
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "response_ids": response_ids,
        "response_mask": response_mask,
        "prompt_index": torch.tensor([b for b, _, _ in responses]),
        "ranks": ranks,
        "valid": valid,
        "slot": torch.tensor([b * k_max + k for b, k, _ in responses]),
    }


def scatter_scores(flat: torch.Tensor, slot: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """(N,) scores of the flat sequences -> (B, K_max) grid (0 in padding slots), differentiable."""
    grid = torch.zeros(shape.numel(), dtype=flat.dtype, device=flat.device)
    return grid.index_put((slot,), flat).view(shape)
