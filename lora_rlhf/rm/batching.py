"""Batches of K-way rankings: every response of every prompt as one row, so each is scored exactly once."""

from __future__ import annotations

import torch

from lora_rlhf.data.batching import pad_left, pad_right
from lora_rlhf.data.rankings import RankingExample


def collate_rankings(examples: list[RankingExample], pad_id: int) -> dict[str, torch.Tensor]:
    """B rankings with K_b responses each -> one left-padded batch of the N = sum K_b sequences.

    Returns:
        input_ids, attention_mask: (N, T) prompt + response, left-padded (the reward is read at the last token).
        ranks: (B, K_max) rank of each response, 0 = best; 0 in padding slots.
        valid: (B, K_max) bool, False for the padding slots of prompts with K_b < K_max.
        slot: (N,) each sequence's flat position b * K_max + k in the (B, K_max) grid.
    """
    ids, mask = pad_left([e.prompt_ids + r for e in examples for r in e.response_ids], pad_id)
    return {"input_ids": ids, "attention_mask": mask, **_rank_grid(examples)}


def collate_shared_prompts(examples: list[RankingExample], pad_id: int) -> dict[str, torch.Tensor]:
    """B rankings -> each prompt once and its N = sum K_b responses apart, for `forward.prefix_rewards`.

    The prompt of a ranking is encoded once and its K responses continue from its KV cache, so a batch
    costs sum(P_b + sum_k R_bk) tokens instead of sum_k (P_b + R_bk) (InstructGPT §3.5 scores the K
    responses of a prompt as one batch element; here the prompt itself is computed once too).

    Returns:
        prompt_ids, prompt_mask: (B, P) the prompts, left-padded.
        response_ids, response_mask: (N, R) the responses, right-padded.
        prompt_index: (N,) the prompt row of each response.
        ranks, valid, slot: as `collate_rankings`.
    """
    prompt_ids, prompt_mask = pad_left([e.prompt_ids for e in examples], pad_id)
    response_ids, response_mask = pad_right([r for e in examples for r in e.response_ids], pad_id)
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "response_ids": response_ids,
        "response_mask": response_mask,
        "prompt_index": torch.tensor([b for b, e in enumerate(examples) for _ in e.response_ids]),
        **_rank_grid(examples),
    }


def _rank_grid(examples: list[RankingExample]) -> dict[str, torch.Tensor]:
    """ranks and valid (B, K_max), and slot (N,): where each of the N responses, in order, sits in the grid."""
    k_max = max(len(e.response_ids) for e in examples)
    ranks = torch.zeros((len(examples), k_max), dtype=torch.long)
    valid = torch.zeros((len(examples), k_max), dtype=torch.bool)
    for b, example in enumerate(examples):
        ranks[b, : len(example.ranks)] = torch.tensor(example.ranks)
        valid[b, : len(example.ranks)] = True
    slot = torch.tensor([b * k_max + k for b, e in enumerate(examples) for k in range(len(e.response_ids))])
    return {"ranks": ranks, "valid": valid, "slot": slot}


def scatter_scores(flat: torch.Tensor, slot: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """(N,) scores of the flat sequences -> (B, K_max) grid (0 in padding slots), differentiable."""
    grid = torch.zeros(shape.numel(), dtype=flat.dtype, device=flat.device)
    return grid.index_put((slot,), flat).view(shape)
