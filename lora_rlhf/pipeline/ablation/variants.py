"""The ablation's methods: what each changes in RUN_DIR's recipe, and the training budget it gets.

Every method starts from RUN_DIR's sft adapter and uses the same labels: the rankings RUN_DIR's reward model was
trained on. The PPO family (PPO, PPO-ptx, RLOO, GRPO) reaches them through that reward model, the DPO variants
read them directly. The budget is equalised in optimizer steps: a DPO variant's batch (prompts, each with its K
responses) is chosen so that it takes as many optimizer steps as one PPO run of the recipe
(ppo.steps x ppo_epochs x rollout samples / mini_batch_size), covering the rankings once where they divide evenly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lora_rlhf.config.loader import build, merge
from lora_rlhf.config.recipe import RecipeConfig
from lora_rlhf.pipeline import demo_data
from lora_rlhf.pipeline.run_dir import RunDir


@dataclasses.dataclass(frozen=True)
class Method:
    label: str  # the table's row
    stage: str  # the stage that trains it
    role: str  # the adapter it trains (eval.json names it "ppo" for policy, "dpo" for dpo)
    update: Mapping[str, Any]  # recipe changes on top of RUN_DIR's (ptx settings are added by the caller)


METHODS: dict[str, Method] = {
    "ppo": Method("PPO", "ppo", "policy", {"ppo": {"ptx": {"coef": 0.0}}}),
    "ppo_ptx": Method("PPO-ptx", "ppo", "policy", {}),
    # score_baseline prompt_mean is refused with a critic-free estimator: it already baselines on the siblings.
    "rloo": Method(
        "RLOO (critic-free)",
        "ppo",
        "policy",
        {"ppo": {"advantage": "rloo", "ptx": {"coef": 0.0}, "rewards": {"score_baseline": "none"}}},
    ),
    "grpo": Method(
        "GRPO (critic-free)",
        "ppo",
        "policy",
        {"ppo": {"advantage": "grpo", "ptx": {"coef": 0.0}, "rewards": {"score_baseline": "none"}}},
    ),
    "dpo_pairs": Method("DPO, ranking as pairs (sigmoid)", "dpo", "dpo", {"dpo": {"loss_type": "sigmoid"}}),
    "dpo_pl": Method("DPO, whole ranking (Plackett–Luce)", "dpo", "dpo", {"dpo": {"loss_type": "plackett_luce"}}),
}
DEFAULT_METHODS = ("ppo", "ppo_ptx", "rloo", "dpo_pairs", "dpo_pl")
# The eval.json key of each trained role.
EVAL_NAME = {"policy": "ppo", "dpo": "dpo"}


def method_recipe(
    saved: Mapping[str, Any],
    source: RunDir,
    name: str,
    overrides: Mapping[str, Any],
    *,
    steps: int | None,
    ptx_coef: float,
    ptx_path: str,
    best_of_n: bool,
) -> RecipeConfig:
    """RUN_DIR's recipe + the user's overrides + the method's own settings, data paths absolute into RUN_DIR.

    The PPO-family methods name the same ptx file; only PPO-ptx gives it a non-zero coefficient. Only the first
    method's eval draws best-of-N (it needs only sft and reward, so the others would repeat it).
    """
    update: dict[str, Any] = {"ppo": {"ptx": {"coef": ptx_coef, "data": {"path": ptx_path}}}}
    if steps is not None:
        update["ppo"]["steps"] = steps
    if not best_of_n:
        update["eval"] = {"best_of_n": 0}
    plain = _build(saved, overrides, update, source)  # RUN_DIR's recipe as PPO would run it
    update = merge(update, dict(METHODS[name].update))
    ppo = plain.ppo
    if (update.get("ppo") or {}).get("advantage", "gae") != "gae" and ppo.samples_per_prompt < 2:
        # A critic-free baseline needs siblings (docs/critic_free.md): 2 samples per prompt, and a mini-batch
        # twice as large, so that it takes as many optimizer steps as PPO.
        update = merge(update, {"ppo": {"samples_per_prompt": 2, "mini_batch_size": 2 * ppo.mini_batch_size}})
    if METHODS[name].stage == "dpo":
        dpo = dpo_budget(plain, ppo_optimizer_steps(plain))
        if "learning_rate" not in ((overrides.get("dpo") or {}).get("train") or {}):
            # The same step size as PPO's policy: equal steps of the same size on the same LoRA adapter.
            dpo.setdefault("train", {})["learning_rate"] = plain.ppo.optim.policy_learning_rate
        update = merge(update, {"dpo": dpo})
    return _build(saved, overrides, update, source)


def _build(
    saved: Mapping[str, Any], overrides: Mapping[str, Any], update: Mapping[str, Any], source: RunDir
) -> RecipeConfig:
    recipe = build(RecipeConfig, merge(merge(saved, overrides), update))
    if recipe.demo.enabled:
        # Filled from RUN_DIR, not from the method's own directory: all train and evaluate on the run's own data.
        demo_data.fill_paths(recipe, source)
    if not recipe.eval.lm_text.path and source.data("lm_text.jsonl").is_file():
        recipe.eval.lm_text.path = str(source.data("lm_text.jsonl").resolve())
    return recipe


def ppo_optimizer_steps(recipe: RecipeConfig) -> int:
    """Policy optimizer steps of one PPO run: iterations x epochs x minibatches of the rollout's samples."""
    ppo = recipe.ppo
    samples = ppo.rollout_batch_size * ppo.samples_per_prompt
    return ppo.steps * ppo.ppo_epochs * math.ceil(samples / ppo.mini_batch_size)


def dpo_budget(recipe: RecipeConfig, target_steps: int) -> dict[str, Any]:
    """The dpo section that trains on RUN_DIR's rankings (the RM's file, named explicitly) for `target_steps`
    optimizer steps: the smallest batch of prompts that covers the training rankings in at most that many steps,
    as many passes as it takes (one where the prompts divide evenly), capped by max_steps."""
    rankings = recipe.rm.data.path
    section: dict[str, Any] = {"data": {"path": rankings}}
    rows = count_rows(rankings)
    if rows is None:  # a Hub dataset or a non-JSONL file: the recipe's own batch, steps reported as trained
        return section
    fraction = recipe.dpo.eval_fraction if recipe.dpo.eval_fraction is not None else recipe.rm.eval_fraction
    train_rows = max(1, rows - round(rows * fraction))
    batch = math.ceil(train_rows / target_steps)  # every ranking seen once before any is seen twice
    per_epoch = math.ceil(train_rows / batch)
    section["train"] = {"batch_size": batch, "epochs": math.ceil(target_steps / per_epoch), "max_steps": target_steps}
    return section


def count_rows(path: str) -> int | None:
    """Non-empty lines of a local JSONL file; None for anything else."""
    file = Path(path)
    if not path or file.suffix != ".jsonl" or not file.is_file():
        return None
    with file.open() as handle:
        return sum(1 for line in handle if line.strip())


def planned_budget(recipe: RecipeConfig, name: str) -> dict[str, Any]:
    """What the method trains on: prompts, samples (responses it takes gradients on), optimizer steps."""
    if METHODS[name].stage == "dpo":
        train = recipe.dpo.train
        rows = count_rows(recipe.dpo.data.path)
        responses = _responses(recipe.dpo.data.path)
        steps = train.max_steps
        prompts = min(rows, steps * train.batch_size) if rows is not None and steps else None
        return {
            "data": recipe.dpo.data.path,
            "optimizer_steps": steps,
            "prompts": prompts,
            # K varies by prompt (the demo merges duplicate samples): all responses, pro rata where not all seen
            "samples": round(responses * prompts / rows) if prompts is not None and responses else None,
            "sampled_by": "sft (the rankings, off-policy)",
        }
    ppo = recipe.ppo
    prompts = ppo.steps * ppo.rollout_batch_size
    return {
        "data": ppo.prompts.path,
        "optimizer_steps": ppo_optimizer_steps(recipe),
        "prompts": prompts,
        "samples": prompts * ppo.samples_per_prompt,
        "sampled_by": "the policy (on-policy rollouts)",
    }


def _responses(path: str) -> int | None:
    """Responses in a local JSONL rankings file ({"responses": [...]}: K each; {"chosen", "rejected"}: 2)."""
    if count_rows(path) is None:
        return None
    with Path(path).open() as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return sum(len(row["responses"]) if "responses" in row else 2 for row in rows)
