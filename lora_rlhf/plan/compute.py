"""The time side of the plan: matmul FLOPs of one PPO iteration, phase by phase, from the shape and the recipe.

A forward costs 2 FLOPs per weight of every decoder linear and token (Kaplan et al. 2020, §2.1: C_forward ≈ 2N),
plus 2 · H · V per position whose logits are read (the LM head). Training LoRA on a frozen base backpropagates
the activations' gradient through every frozen linear (another 2N per token) while the adapters' own weight
gradients are negligible, so a training pass is ~2 forwards; gradient checkpointing recomputes the forward
(~3). Attention's quadratic term is left out, and every row is counted at full length (the longest prompt and
max_new_tokens), so the figures are an upper bound to compare settings with, not a wall-clock prediction.

    generate   the policy decodes every rollout row (prompt + response)
    score      one pass per frozen role over the rollout: reference, value (gae only) and reward, and the
               policy's when its log-probs are not recorded while sampling
    train      ppo_epochs x (policy, + value for gae), + the PPO-ptx batch of every micro-batch
"""

from __future__ import annotations

import dataclasses

from lora_rlhf.plan.shapes import ModelShape
from lora_rlhf.ppo.config import PPOConfig


@dataclasses.dataclass(frozen=True)
class IterationCompute:
    """FLOPs of one PPO iteration, by phase."""

    generate: float
    score: float
    train: float
    score_passes: int  # forward passes over the rollout while scoring (roles)
    train_roles: int  # roles trained per micro-batch (policy, value)

    @property
    def total(self) -> float:
        return self.generate + self.score + self.train


def forward_flops(shape: ModelShape, rows: int, tokens: int, logit_positions: int = 0) -> float:
    """2 FLOPs per decoder-linear weight per token, + the LM head on `logit_positions` of each row."""
    return 2.0 * rows * (shape.linear_params * tokens + shape.hidden * shape.vocab * logit_positions)


def ppo_iteration_compute(shape: ModelShape, ppo: PPOConfig, *, checkpointing: bool) -> IterationCompute:
    """One iteration of `ppo` on `shape` (see the module docstring)."""
    rows, response = ppo.rollout_sequences, ppo.sampling.max_new_tokens
    tokens = ppo.max_prompt_length + response
    lm_pass = forward_flops(shape, rows, tokens, response)  # a pass that reads log-probs
    head_pass = forward_flops(shape, rows, tokens)  # a scalar head's pass (value, reward)
    critic = not ppo.critic_free
    policy_pass = 0 if ppo.sampling.logprobs_from_generation else 1
    score = (1 + policy_pass) * lm_pass + (1 + int(critic)) * head_pass
    backward = 2.0 if checkpointing else 1.0  # the activations' gradient, + the recomputed forward
    per_epoch = (1 + backward) * (lm_pass + (head_pass if critic else 0.0))
    if ppo.ptx.enabled:
        micro_batches = rows // ppo.micro_batch_size
        ptx = ppo.ptx
        per_epoch += (
            (1 + backward) * micro_batches * forward_flops(shape, ptx.batch_size, ptx.max_length, ptx.max_length)
        )
    return IterationCompute(
        generate=lm_pass,
        score=score,
        train=ppo.ppo_epochs * per_epoch,
        score_passes=1 + policy_pass + 1 + int(critic),
        train_roles=1 + int(critic),
    )
