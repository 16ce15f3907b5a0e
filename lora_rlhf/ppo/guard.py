"""Stop PPO at the first NaN / inf or runaway KL, after saving what is needed to look into it.

A diverged policy keeps producing numbers; without a guard the run "finishes" and writes adapters that
look complete. Instead we save the roles and the offending rollout under checkpoints/ppo/failed-step-N/
and stop with a one-line message naming the step.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.io import atomic_dir
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.ppo.rollout import Rollout
from lora_rlhf.train import distributed

# The figures that must stay finite; any other figure (e.g. explained variance of a constant) may be nan.
WATCHED = (
    "reward",
    "kl",
    "policy_loss",
    "value_loss",
    "ptx_loss",
    "kl_loss",
    "loss",
    "policy_grad_norm",
    "value_grad_norm",
    "policy_update",  # inf where clip_and_step did not take a step (train/optim.py)
    "value_update",
)


def find_problem(figures: Mapping[str, float], kl_ceiling: float | None) -> str | None:
    """A description of what is wrong with one iteration's figures, or None if they are fine."""
    for key in WATCHED:
        if key in figures and not math.isfinite(figures[key]):
            return f"{key} is {figures[key]}"
    if kl_ceiling is not None and figures.get("kl", 0.0) > kl_ceiling:
        return f"kl {figures['kl']:.4g} exceeds ppo.rewards.kl_ceiling {kl_ceiling:g}"
    return None


def save_failure(
    folder: Path, step: int, problem: str, stack: RoleStack, rollout: Rollout | None, figures: Mapping[str, float]
) -> Path:
    """Write roles, the rollout's tensors and the figures into `folder`/failed-step-N (atomically)."""
    target = folder / f"failed-step-{step:08d}"
    with atomic_dir(target) as tmp:
        for role in ("policy", "value"):
            if stack.has_role(role):  # no value role in a critic-free run (ppo.advantage rloo / grpo)
                stack.save_role(role, tmp / "roles" / role)
        if rollout is not None:
            tensors = {
                name: value.detach().cpu().contiguous()
                for name, value in vars(rollout).items()
                if isinstance(value, torch.Tensor)
            }
            save_file(tensors, str(tmp / "rollout.safetensors"))
            (tmp / "responses.json").write_text(
                json.dumps({"prompts": rollout.prompts, "responses": rollout.responses}, indent=1)
            )
        (tmp / "failure.json").write_text(
            json.dumps({"step": step, "problem": problem, "figures": {k: str(v) for k, v in figures.items()}}, indent=2)
        )
    return target


def check(
    figures: Mapping[str, float],
    *,
    step: int,
    kl_ceiling: float | None,
    folder: Path,
    stack: RoleStack,
    rollout: Rollout | None,
) -> None:
    """Raise a one-line LoraRlhfError (after saving the evidence) if this iteration's figures are bad."""
    problem = find_problem(figures, kl_ceiling)
    if problem is None:
        return
    # Every process stops; the main one keeps the evidence (the figures are global, issue 13).
    saved = save_failure(folder, step, problem, stack, rollout, figures) if distributed.is_main() else folder
    raise LoraRlhfError(f"ppo stopped at step {step}: {problem}; roles and rollout saved in {saved}")
