"""Best-of-N sampling from the SFT model, picked by the reward model (Gao et al. 2022, "Scaling Laws for
Reward Model Overoptimization").

The cheapest check that the RM gives PPO something to climb: if the RM's favourite of N SFT samples does
not beat one random sample on the gold judge, PPO optimising the same RM cannot be expected to either.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lora_rlhf.data.chat import Prompt
from lora_rlhf.data.prompts import prompt_text
from lora_rlhf.eval import stats
from lora_rlhf.eval.compare import mean
from lora_rlhf.eval.config import EvalConfig
from lora_rlhf.eval.responses import Responses, generate_responses
from lora_rlhf.eval.result import BestOfN
from lora_rlhf.eval.scoring import GoldFn, bootstrap_kwargs, reward_scores
from lora_rlhf.models.roles import RoleStack


def select_best(scores: torch.Tensor | np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """(P, N) RM scores of N candidates per prompt -> (P,) index of each prompt's best candidate.

    Ties go to the lowest index (the first sampled), so the pick is deterministic.
    """
    array = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"select_best needs a (prompts, candidates) score matrix with both sizes >= 1, got shape {array.shape}"
        )
    return array.argmax(axis=1)


def sample_candidates(stack: RoleStack, rendered: Sequence[str], config: EvalConfig) -> Responses:
    """N samples per prompt from "sft", prompt p's candidates at rows p*N .. p*N + N-1.

    Each eval batch's prompts, repeated N times, go through one batched `generate`.
    """
    n = config.best_of_n
    repeated = [text for text in rendered for _ in range(n)]
    return generate_responses(
        stack,
        "sft",
        repeated,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size * n,
        temperature=config.best_of_n_temperature,
    )


def best_of_n(
    stack: RoleStack,
    prompts: Sequence[Prompt],
    rendered: Sequence[str],
    config: EvalConfig,
    *,
    gold_fn: GoldFn | None = None,
    sft_gold: Sequence[float] | None = None,
    candidates: Responses | None = None,
    candidate_scores: Sequence[float] | None = None,
) -> tuple[BestOfN, list[float] | None]:
    """Best-of-N on `prompts`, with its gold intervals paired against `sft_gold` (sft's own per-prompt gold), and
    (P,) the gold of each prompt's pick (None without `gold_fn`), which eval_samples.jsonl keeps.

    The gold fields only with `gold_fn`: `gold_ci` is the interval of the picks' mean gold, `gold_random_sample`
    the mean gold of all N*P samples; `gold_minus_sample_ci` pairs each pick with its prompt's mean sample,
    `gold_minus_sft_ci` with sft's own per-prompt gold in eval (its greedy answer, or its eval samples' mean;
    only with `sft_gold`). The caller fills `prompts`, `candidates_from_eval_samples` and `gold_sft`.
    `candidates` (N per prompt, prompt p's at rows p*N .. p*N + N-1) are used instead of sampling new ones,
    and `candidate_scores` (their RM scores, in the same order) instead of scoring them again.
    """
    n = config.best_of_n
    if candidates is None:
        torch.manual_seed(config.seed)
        candidates = sample_candidates(stack, rendered, config)
    elif len(candidates.texts) != n * len(prompts):
        raise ValueError(f"best_of_n: {len(candidates.texts)} candidates for {len(prompts)} prompts x N = {n}")
    if candidate_scores is None:
        candidate_scores = reward_scores(stack, candidates.input_ids, config.batch_size, candidates.response_start)
    scores = np.asarray(candidate_scores, dtype=np.float64).reshape(len(prompts), n)
    picks = select_best(scores)
    result = BestOfN(n, config.best_of_n_temperature, float(scores[np.arange(len(prompts)), picks].mean()))
    if gold_fn is None:
        return result, None
    raw = [prompt_text(p) for p in prompts for _ in range(n)]
    gold = np.asarray([float(g) for g in gold_fn(raw, candidates.texts)]).reshape(len(prompts), n)
    picked_gold = gold[np.arange(len(prompts)), picks]
    result.gold = mean(picked_gold.tolist())
    result.gold_ci = stats.bootstrap_ci(picked_gold, **bootstrap_kwargs(config))
    result.gold_random_sample = float(gold.mean())  # what one random sample scores, on average
    # The RM's pick against the average of the same prompt's N samples: > 0 means the RM ranks by something
    # the gold judge rewards, i.e. there is a gradient for PPO to follow.
    result.gold_minus_sample_ci = stats.paired_diff_ci(picked_gold, gold.mean(axis=1), **bootstrap_kwargs(config))
    if sft_gold is not None:
        result.gold_minus_sft_ci = stats.paired_diff_ci(picked_gold, sft_gold, **bootstrap_kwargs(config))
    return result, picked_gold.tolist()
