"""Scores of each model's responses (gold judge, reward model) and the intervals around their comparisons."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import combinations
from typing import Any

import torch

from lora_rlhf.data.batching import length_grouped_order, pad_left, pad_right
from lora_rlhf.eval import stats
from lora_rlhf.eval.compare import mean, pairwise_win_rates
from lora_rlhf.eval.config import EvalConfig
from lora_rlhf.eval.stats import Interval
from lora_rlhf.models import forward
from lora_rlhf.models.roles import RoleStack

# (prompts' user text, responses) -> one gold score per response.
GoldFn = Callable[[list[str], list[str]], list[float]]


@torch.no_grad()
def reward_scores(
    stack: RoleStack,
    sequences: Sequence[Sequence[int] | torch.Tensor],
    batch_size: int,
    prompt_lengths: Sequence[int] | None = None,
) -> list[float]:
    """RM score of every prompt + response id sequence (no padding), `batch_size` sequences at a time, in the
    given order; batched by length (`length_grouped_order`), as padding costs as much as tokens.

    With `prompt_lengths` (where each sequence's response starts), sequences of a batch that share a prompt
    (several samples of one prompt, the K responses of a ranking) have it encoded once (`prefix_rewards`).
    """
    if prompt_lengths is not None:  # batches of rows with similar response lengths, a prompt's rows together
        order = length_grouped_order(sequences, prompt_lengths)
        sequences, prompt_lengths = [sequences[i] for i in order], [prompt_lengths[i] for i in order]
    else:
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        sequences = [sequences[i] for i in order]
    scores: list[float] = []
    for begin in range(0, len(sequences), batch_size):
        chunk = [torch.as_tensor(s, dtype=torch.long) for s in sequences[begin : begin + batch_size]]
        starts = prompt_lengths[begin : begin + batch_size] if prompt_lengths is not None else None
        shared = _shared_prompt_batch(chunk, starts, stack.tokenizer.pad_token_id) if starts is not None else None
        if shared is not None:
            flat = forward.prefix_rewards(stack, "reward", *(t.to(stack.device) for t in shared))
        else:
            ids, mask = pad_left(chunk, stack.tokenizer.pad_token_id)
            flat = forward.rewards(stack, "reward", ids.to(stack.device), mask.to(stack.device))
        scores += flat.float().cpu().tolist()
    unsorted = [0.0] * len(scores)
    for position, row in enumerate(order):
        unsorted[row] = scores[position]
    return unsorted


def _shared_prompt_batch(chunk: list[torch.Tensor], starts: Sequence[int], pad_id: int) -> tuple | None:
    """(prompt_ids, prompt_mask, response_ids, response_mask, prompt_index) when some prompt repeats and every
    response is non-empty; else None (full rows are as cheap)."""
    if any(len(seq) <= start for seq, start in zip(chunk, starts)):
        return None
    keys = [tuple(seq[:start].tolist()) for seq, start in zip(chunk, starts)]
    distinct = list(dict.fromkeys(keys))
    if len(distinct) == len(keys):
        return None
    prompt_ids, prompt_mask = pad_left(distinct, pad_id)
    response_ids, response_mask = pad_right([seq[start:] for seq, start in zip(chunk, starts)], pad_id)
    row = {key: i for i, key in enumerate(distinct)}
    return prompt_ids, prompt_mask, response_ids, response_mask, torch.tensor([row[k] for k in keys])


def bootstrap_kwargs(config: EvalConfig) -> dict[str, Any]:
    return {"samples": config.bootstrap_samples, "confidence": config.confidence, "seed": config.seed}


def mean_intervals(scores: Mapping[str, Sequence[float]], config: EvalConfig) -> dict[str, Interval]:
    """{"base": [...], ...} -> {"base": (lo, hi), ...}: bootstrap interval of each model's mean score."""
    return {name: stats.bootstrap_ci(s, **bootstrap_kwargs(config)) for name, s in scores.items()}


def paired_intervals(scores: Mapping[str, Sequence[float]], config: EvalConfig) -> dict[str, Interval]:
    """{"base", "sft", "ppo"} scores -> {"sft_minus_base": (lo, hi), ...}: every later model minus every
    earlier one, paired over prompts (the pairs and their order of compare.pairwise_win_rates)."""
    return {
        f"{later}_minus_{earlier}": stats.paired_diff_ci(scores[later], scores[earlier], **bootstrap_kwargs(config))
        for earlier, later in combinations(list(scores), 2)
    }


def win_rate_intervals(scores: Mapping[str, Sequence[float]], config: EvalConfig) -> dict[str, Interval]:
    """{"ppo_vs_sft": (lo, hi), ...}: paired bootstrap interval of each win rate of compare.pairwise_win_rates."""
    return {
        f"{later}_vs_{earlier}": stats.win_rate_ci(scores[later], scores[earlier], **bootstrap_kwargs(config))
        for earlier, later in combinations(list(scores), 2)
    }


def compare_models(
    gold: Mapping[str, list[float]] | None, reward: Mapping[str, list[float]] | None, config: EvalConfig
) -> dict[str, Any]:
    """Means, win rates and their intervals from per-prompt scores ({model: (P,) scores}): the gold*, reward*
    and win_rate* fields of EvalResult, by name.

    Win rates are judged by the gold scores where they exist, else by the reward model.
    """
    results: dict[str, Any] = {}
    if gold is not None:
        results["gold"] = {name: mean(s) for name, s in gold.items()}
        results["gold_mean_ci"] = mean_intervals(gold, config)
        results["gold_ci"] = paired_intervals(gold, config)
    if reward is not None:
        results["reward"] = {name: mean(s) for name, s in reward.items()}
        results["reward_mean_ci"] = mean_intervals(reward, config)
    judge = gold if gold is not None else reward
    if judge is not None:
        results["win_rate"] = pairwise_win_rates(judge)
        results["win_rate_ci"] = win_rate_intervals(judge, config)
        results["win_rate_judge"] = "gold" if gold is not None else "reward_model"
    return results
