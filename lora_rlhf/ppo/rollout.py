"""Rollouts: sample responses from `policy`, then score them with the frozen roles on the same base.

One rollout is one typed container (OpenRLHF-style). Sequences are laid out as

    [pad ... pad | prompt tokens | response tokens (up to and including EOS) | pad ... pad]
     <------------ P columns, left-padded ------------> <--------- A columns, right-padded --------->

so column P + j holds response token j, and the distribution that produced it is read at column P + j - 1.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import torch

from lora_rlhf.data.batching import pad_left
from lora_rlhf.models import engine, forward
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.models.sequences import ends_with_stop, stop_mask
from lora_rlhf.ppo.config import SamplingConfig
from lora_rlhf.ppo.hooks import Hooks, phase

# (prompts, responses) -> one score per response: the labeler's gold judge, or a programmatic reward.
TextScorer = Callable[[list[str], list[str]], list[float]]


@dataclasses.dataclass
class EncodedPrompt:
    ids: list[int]  # the prompt rendered with the chat template, tokenized
    text: str  # the user's words (for a gold judge)


@dataclasses.dataclass
class Rollout:
    input_ids: torch.Tensor  # (B, P + A) prompt (left-padded) + response (right-padded)
    attention_mask: torch.Tensor  # (B, P + A) 1 on prompt and response tokens
    response_mask: torch.Tensor  # (B, A) 1 on response tokens, up to and including EOS
    prompt_width: int  # P
    logprobs: torch.Tensor  # (B, A) log pi_old(a_t | s_t) of the sampling policy
    ref_logprobs: torch.Tensor  # (B, A) log pi_SFT(a_t | s_t), the frozen reference
    values: torch.Tensor | None  # (B, A) V_old(s_t) from the value role; None when critic-free (rloo, grpo)
    scores: torch.Tensor  # (B,) reward-model score at the last response token (RM bias included)
    entropy: torch.Tensor  # (B, A) entropy of pi_old(. | s_t), for logging
    finished: torch.Tensor  # (B,) bool: the response ended with EOS (False: cut at max_new_tokens)
    prompts: list[str]  # the user's words, per row
    responses: list[str]  # decoded responses, per row
    advantages: torch.Tensor | None = None  # (B, A) filled in by the trainer
    returns: torch.Tensor | None = None  # (B, A) filled in by the trainer

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: torch.Tensor) -> Rollout:
        """The sub-rollout of `rows` (a minibatch); tensors are indexed, lists picked."""
        picked = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, torch.Tensor):
                picked[field.name] = value[rows.to(value.device)]
            elif isinstance(value, list):
                picked[field.name] = [value[i] for i in rows.tolist()]
            else:
                picked[field.name] = value
        return Rollout(**picked)

    def trimmed(self) -> Rollout:
        """The same rows without the columns that are padding in all of them (`padding_free_columns`): a
        micro-batch pays for its own longest response and prompt, not the whole rollout's."""
        first, end = padding_free_columns(self.attention_mask, self.prompt_width)
        answer = end - self.prompt_width
        picked = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in ("input_ids", "attention_mask"):
                value = value[:, first:end]
            elif isinstance(value, torch.Tensor) and value.dim() == 2:  # (B, A) per response token
                value = value[:, :answer]
            picked[field.name] = value
        picked["prompt_width"] = self.prompt_width - first
        return Rollout(**picked)


def padding_free_columns(attention_mask: torch.Tensor, prompt_width: int) -> tuple[int, int]:
    """(B, P + A) mask of rollout rows -> (first, end): the columns [first, end) hold every real token.

    Prompts are padded on the left and responses on the right, so a batch of rows whose longest prompt and
    longest response are shorter than the rollout's carries whole columns of padding; every forward pays
    for them (on the demo a rollout's longest response had 24 tokens, the mean 8). At least one prompt
    column and one response column (when there is any) are kept.
    """
    real = attention_mask.bool().any(dim=0)
    prompt_real = real[:prompt_width].nonzero()
    first = min(int(prompt_real[0]) if len(prompt_real) else prompt_width - 1, prompt_width - 1)
    response_real = real[prompt_width:].nonzero()
    answer = int(response_real[-1]) + 1 if len(response_real) else min(1, attention_mask.shape[1] - prompt_width)
    return first, prompt_width + answer


@dataclasses.dataclass
class Sampled:
    input_ids: torch.Tensor  # (B, P + A) prompt (left-padded) + response (right-padded)
    attention_mask: torch.Tensor  # (B, P + A)
    response_mask: torch.Tensor  # (B, A) long, 1 up to and including the stop token
    prompt_width: int  # P
    # (B, A) log pi(a_t | s_t) and entropy of the distribution each token was drawn from, recorded during
    # generation (models/engine.py, models/sampling.py); None when sampling.logprobs_from_generation is off.
    logprobs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None


@torch.no_grad()
def sample(stack: RoleStack, prompts: Sequence[EncodedPrompt], sampling: SamplingConfig) -> Sampled:
    """Generate from `policy`, recording the sampling distribution's log-probs unless told to recompute them."""
    ids, mask = pad_left([p.ids for p in prompts], stack.tokenizer.pad_token_id)
    ids, mask = ids.to(stack.device), mask.to(stack.device)
    stops = stack.eos_ids()
    decoded = engine.sample(
        stack,
        "policy",
        ids,
        mask,
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        with_logprobs=sampling.logprobs_from_generation,
        stop_ids=stops,
    )
    width = ids.shape[1]
    responses = decoded.sequences[:, width:]
    resp_mask = stop_mask(responses, stops)
    keep = int(resp_mask.sum(dim=1).max().item()) if responses.shape[1] else 0
    responses, resp_mask = responses[:, :keep], resp_mask[:, :keep]
    pad = stack.tokenizer.pad_token_id
    responses = torch.where(resp_mask.bool(), responses, torch.full_like(responses, pad))
    sampled = Sampled(torch.cat([ids, responses], dim=1), torch.cat([mask, resp_mask], dim=1), resp_mask, width)
    if decoded.logprobs is not None:
        sampled.logprobs, sampled.entropy = decoded.logprobs[:, :keep], decoded.entropy[:, :keep]
    return sampled


@torch.no_grad()
def score(
    stack: RoleStack,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_width: int,
    *,
    temperature: float,
    micro_batch_size: int,
    use_reward_role: bool = True,
    with_policy: bool = True,
    with_value: bool = True,
) -> dict[str, torch.Tensor]:
    """Old log-probs and entropy (policy), reference log-probs (sft), values (value), scores (reward).

    All run on the one base, batched `micro_batch_size` rows at a time, each batch cut to its own padding-free
    columns; reference, value and reward share one forward of the stacked rows (`forward.frozen_scores`),
    or, where the samples of one prompt (consecutive rows) can share one encoding of it, run one role at a time.
    Without `with_policy` the policy's pass is skipped (its log-probs were recorded while sampling); without
    `with_value` (critic-free PPO, issue 27) so is the value role's, and "values" is not returned.
    """
    names = (["logprobs", "entropy"] if with_policy else []) + ["ref_logprobs"] + (["values"] if with_value else [])
    names += ["scores"] if use_reward_role else []
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    width = input_ids.shape[1] - prompt_width
    for begin in range(0, input_ids.shape[0], micro_batch_size):
        first, end = padding_free_columns(attention_mask[begin : begin + micro_batch_size], prompt_width)
        ids = input_ids[begin : begin + micro_batch_size, first:end]
        mask = attention_mask[begin : begin + micro_batch_size, first:end]
        p = prompt_width - first
        if with_policy:
            policy = forward.response_logprobs(
                stack, "policy", ids, mask, p, temperature=temperature, with_entropy=True
            )
            parts["logprobs"].append(policy.logprobs)
            parts["entropy"].append(policy.entropy)
        frozen = forward.frozen_scores(
            stack, ids, mask, p, temperature=temperature, with_reward=use_reward_role, with_value=with_value
        )
        if frozen is None:  # one pass per role (see forward.frozen_scores)
            frozen = {
                "ref_logprobs": forward.response_logprobs(
                    stack, "reference", ids, mask, p, temperature=temperature
                ).logprobs
            }
            if with_value:
                frozen["values"] = forward.response_values(stack, "value", ids, mask, p)
            if use_reward_role:
                frozen["scores"] = forward.response_rewards(stack, "reward", ids, mask, p)
        for name, value in frozen.items():
            parts[name].append(value)
        # (b, A') per-token figures of this micro-batch back to the rollout's A columns (zeros: padding)
        for name in ("logprobs", "entropy", "ref_logprobs", "values"):
            if name in parts and parts[name][-1].shape[1] < width:
                parts[name][-1] = torch.nn.functional.pad(parts[name][-1], (0, width - parts[name][-1].shape[1]))
    return {k: torch.cat(v).float() for k, v in parts.items()}


def make_rollout(
    stack: RoleStack,
    prompts: Sequence[EncodedPrompt],
    sampling: SamplingConfig,
    micro_batch_size: int,
    reward_fn: TextScorer | None = None,
    *,
    with_value: bool = True,
    hooks: Hooks = (),
) -> tuple[Rollout, dict[str, float]]:
    """Sample and score one batch of prompts; returns the rollout and the seconds spent generating and scoring.

    Scores come from the reward role, or from `reward_fn` (a programmatic reward) when one is given. Without
    `with_value` (critic-free PPO) the value role is never run and `rollout.values` is None. `hooks` see the
    generate and score phases (lora_rlhf.ppo.hooks).
    """
    start = time.perf_counter()
    with phase(hooks, "generate"):
        sampled = sample(stack, prompts, sampling)
    generated = time.perf_counter()
    with phase(hooks, "score"):
        rollout = _scored_rollout(stack, prompts, sampled, sampling, micro_batch_size, reward_fn, with_value)
    timing = {"time_generate": generated - start, "time_score": time.perf_counter() - generated}
    return rollout, timing


def _scored_rollout(
    stack: RoleStack,
    prompts: Sequence[EncodedPrompt],
    sampled: Sampled,
    sampling: SamplingConfig,
    micro_batch_size: int,
    reward_fn: TextScorer | None,
    with_value: bool,
) -> Rollout:
    """`sampled` as a rollout: the scoring passes, the decoded responses, `reward_fn`'s scores when given."""
    input_ids, attention_mask, resp_mask, width = (
        sampled.input_ids,
        sampled.attention_mask,
        sampled.response_mask,
        sampled.prompt_width,
    )
    scored = score(
        stack,
        input_ids,
        attention_mask,
        width,
        temperature=sampling.temperature,
        micro_batch_size=micro_batch_size,
        use_reward_role=reward_fn is None,
        with_policy=sampled.logprobs is None,
        with_value=with_value,
    )
    if sampled.logprobs is not None:
        scored["logprobs"], scored["entropy"] = sampled.logprobs, sampled.entropy
    texts = stack.tokenizer.batch_decode(input_ids[:, width:], skip_special_tokens=True)
    finished = ends_with_stop(input_ids[:, width:], resp_mask, stack.eos_ids())
    if reward_fn is not None:
        values = reward_fn([p.text for p in prompts], [t.strip() for t in texts])
        scored["scores"] = torch.tensor(values, dtype=torch.float32, device=input_ids.device)
    return Rollout(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=resp_mask.float(),
        prompt_width=width,
        prompts=[p.text for p in prompts],
        responses=[t.strip() for t in texts],
        finished=finished,
        values=scored.pop("values", None),
        **scored,
    )
