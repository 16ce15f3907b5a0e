"""Evaluation's generation split across the processes of `accelerate launch` (issue 13).

Generating every model's responses is most of an evaluation's time. Each process generates for its
contiguous share of the prompts (a prompt's samples stay together) and every process receives all the
responses, in prompt order; the scoring that follows runs on the main process. With one process this
is `generate_responses` itself.
"""

from __future__ import annotations

import torch

from lora_rlhf.eval.responses import Responses, generate_responses
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.train import distributed


def generate_across_processes(
    stack: RoleStack,
    role: str,
    prompt_texts: list[str],
    samples_per_prompt: int,
    *,
    max_new_tokens: int,
    batch_size: int,
    temperature: float = 0.0,
) -> Responses:
    """`generate_responses` for `prompt_texts` (`samples_per_prompt` consecutive rows per prompt), split by prompt.

    When sampling, each process draws from its own seed, derived from the shared RNG state so a run is
    repeatable; greedy decoding gives every process's rows as one process would (up to padding).
    """
    options = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "temperature": temperature}
    here = distributed.world()
    if here.size == 1:
        return generate_responses(stack, role, prompt_texts, **options)
    n = samples_per_prompt
    mine = distributed.shard(range(len(prompt_texts) // n))
    rows = [p * n + j for p in mine for j in range(n)]
    seed = int(torch.randint(0, 2**31 - 1, (1,)))  # the same on every process: their RNGs are in step
    devices = [stack.device] if stack.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed + here.rank)
        local = generate_responses(stack, role, [prompt_texts[r] for r in rows], **options) if rows else None
    # Token ids travel as lists: tensors do not unpickle from an object collective.
    parts = distributed.gather_objects(
        None if local is None else (local.texts, [ids.tolist() for ids in local.input_ids], local.response_start)
    )
    merged = Responses([], [], [])
    for part in parts:
        if part is not None:
            texts, ids, starts = part
            merged.texts += texts
            merged.input_ids += [torch.tensor(i, dtype=torch.long) for i in ids]
            merged.response_start += starts
    return merged
