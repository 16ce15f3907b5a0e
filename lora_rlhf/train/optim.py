"""The one way a role's weights are updated: AdamW with a schedule, then clip-and-step (every stage uses both).

One non-finite policy for every stage: a gradient norm or an update that is not finite never reaches the
weights. `clip_and_step` then returns a non-finite norm, and the caller's guard stops the stage naming the step
(train/loop.py for sft, rm and dpo; ppo/guard.py for PPO), so no diverged adapter is ever saved.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import torch
from transformers import get_scheduler

from lora_rlhf.train.config import AdamWConfig


def adamw(
    params: Iterable[torch.nn.Parameter] | Sequence[dict[str, Any]],
    learning_rate: float,
    config: AdamWConfig,
    *,
    scheduler: str,
    warmup_steps: int,
    total_steps: int,
) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over `params` (parameters, or param groups with their own "lr") and its learning-rate schedule."""
    optimizer = torch.optim.AdamW(
        params, lr=learning_rate, betas=tuple(config.adam_betas), weight_decay=config.weight_decay
    )
    schedule = get_scheduler(scheduler, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)
    return optimizer, schedule


class Step(NamedTuple):
    grad_norm: float | None  # the gradient norm before clipping; None without clipping
    updated: bool  # False: the norm or the update was not finite, and the weights are as they were


def clip_and_step(
    params: Sequence[torch.nn.Parameter], optimizer: torch.optim.Optimizer, accelerator: Any, max_grad_norm: float
) -> Step:
    """Clip the gradients of `params` to `max_grad_norm` (0: no clipping), then step and clear the gradients.

    A non-finite norm skips the step; an update too large for the dtype (torch: "cannot be converted ...
    without overflow", raised before any weight changes) is not taken either. The caller's guard then stops.
    """
    norm = None if max_grad_norm <= 0 else float(accelerator.clip_grad_norm_(params, max_grad_norm))
    updated = norm is None or math.isfinite(norm)
    if updated:
        try:
            optimizer.step()
        except RuntimeError as exc:
            if "overflow" not in str(exc):
                raise
            updated = False
    optimizer.zero_grad(set_to_none=True)
    return Step(norm, updated)
