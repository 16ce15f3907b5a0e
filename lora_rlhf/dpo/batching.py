"""DPO batches: the K responses of each ranking as rollout rows, and their summed log-probs under a role.

A row is [left-padded prompt | right-padded response], the layout PPO's rollouts use, so the sequence
log-probs come from `forward.response_logprobs`: chunked over the vocabulary, and each prompt encoded once
for its K responses (rows with equal prompt columns share a KV cache, models/forward.py).
"""

from __future__ import annotations

import dataclasses

import torch

from lora_rlhf.data.rankings import RankingExample
from lora_rlhf.models import forward
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.rm.batching import collate_shared_prompts


@dataclasses.dataclass
class DPOExample:
    ranking: RankingExample
    # log π_ref(y_k|x) of its K responses, when the reference was computed once for the dataset.
    reference_logps: list[float] | None = None


def collate_dpo(examples: list[DPOExample], pad_id: int) -> dict[str, torch.Tensor]:
    """B rankings with K_b responses -> N = Σ K_b rollout rows.

    Returns:
        input_ids, attention_mask: (N, P + A) each response after its prompt; prompts left-padded to P columns,
            responses right-padded to A.
        response_mask: (N, A) 1 on response tokens.
        prompt_width: () P.
        ranks, valid: (B, K_max) as `rm.batching.collate_rankings`; slot: (N,) each row's place in that grid.
        reference_logps: (B, K_max) cached reference log-probs (0 in padding), only when every example has them.
    """
    shared = collate_shared_prompts([e.ranking for e in examples], pad_id)
    index = shared["prompt_index"]
    batch = {
        "input_ids": torch.cat([shared["prompt_ids"][index], shared["response_ids"]], 1),
        "attention_mask": torch.cat([shared["prompt_mask"][index], shared["response_mask"]], 1),
        "response_mask": shared["response_mask"],
        "prompt_width": torch.tensor(shared["prompt_ids"].shape[1]),
        "ranks": shared["ranks"],
        "valid": shared["valid"],
        "slot": shared["slot"],
    }
    if all(e.reference_logps is not None for e in examples):
        grid = torch.zeros(shared["ranks"].shape, dtype=torch.float32)
        for b, example in enumerate(examples):
            grid[b, : len(example.reference_logps)] = torch.tensor(example.reference_logps)
        batch["reference_logps"] = grid
    return batch


def sequence_logprobs(stack: RoleStack, role: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N,) log π_role(y|x) of each row's response: its per-token log-probs summed over the response tokens."""
    width = int(batch["prompt_width"])
    tokens = forward.response_logprobs(
        stack, role, batch["input_ids"], batch["attention_mask"], width
    ).logprobs  # (N, A)
    mask = batch["response_mask"].bool()
    return torch.where(mask, tokens, torch.zeros_like(tokens)).sum(1)
