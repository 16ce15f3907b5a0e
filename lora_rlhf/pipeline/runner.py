"""Run stages of a recipe on ONE role stack: sft -> rm -> ppo -> eval, loading earlier roles from the run dir.

DPO (lora_rlhf/dpo, docs/dpo.md) is a stage of its own, `lora-rlhf dpo`; the pipeline runs it after ppo (before
eval) only when the recipe's `dpo.enabled` is true, so a recipe without it runs as before.

Under `accelerate launch` every process runs these stages on its own stack (issue 13); the main process
alone writes the run directory (recipe, demo data, then what each stage writes), and the others wait at a
barrier wherever they are about to read what it wrote.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lora_rlhf.config.recipe import RecipeConfig, load_recipe
from lora_rlhf.data.prompts import load_prompts
from lora_rlhf.dpo.trainer import train_dpo
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.eval.result import EvalResult
from lora_rlhf.eval.run import evaluate, evaluate_benchmarks
from lora_rlhf.inference.loading import untrusted_model_section
from lora_rlhf.models.names import resolve_model_name
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.pipeline import demo_data
from lora_rlhf.pipeline.precheck import check_data
from lora_rlhf.pipeline.run_dir import STAGE_ROLES, RunDir
from lora_rlhf.ppo.trainer import train_ppo
from lora_rlhf.rm.trainer import train_reward_model
from lora_rlhf.sft.trainer import train_sft
from lora_rlhf.train import distributed

logger = logging.getLogger(__name__)

STAGES = ("sft", "rm", "ppo", "dpo", "eval")
# The stage that produces each role, for "run it first" messages.
PRODUCER = {role: stage for stage, roles in STAGE_ROLES.items() for role in roles}


@dataclasses.dataclass
class StageResult:
    stage: str
    status: str  # "trained", "skipped" (already finished) or "evaluated"
    seconds: float
    summary: dict[str, Any]

    def line(self) -> str:
        figures = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in self.summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        )
        return f"{self.stage:<5} {self.status:<9} {self.seconds:7.1f} s  {figures}"


def default_output_dir(config_path: str | None) -> Path:
    return Path("runs") / (Path(config_path).stem if config_path else "demo")


def prepare(
    config_path: str | None, overrides: Sequence[str], output_dir: str | None, *, trust_remote_code: bool = False
) -> tuple[RecipeConfig, RunDir]:
    """Load the recipe, fill in the demo's data paths, and claim the run directory for it.

    `trust_remote_code` is the command line's flag, the only switch for the base repository's own Python (issue
    29): a recipe file travels with datasets and run directories, so its `model.trust_remote_code` is warned
    about and ignored, and recipe.yaml never records the flag.
    """
    recipe = load_recipe(config_path, overrides)
    asked = {"name_or_path": recipe.model.name_or_path, "trust_remote_code": recipe.model.trust_remote_code}
    untrusted_model_section(asked, trust_remote_code, config_path or "the recipe's overrides")  # warns
    recipe.model.trust_remote_code = False
    run = RunDir(output_dir or default_output_dir(config_path))
    # Claimed before the demo's data paths are filled in: they derive from the run directory itself, so
    # recipe.yaml keeps them empty and a moved or copied run directory still matches its recipe.
    if distributed.is_main():
        run.claim(recipe.to_dict())
    distributed.barrier()
    recipe.model.trust_remote_code = trust_remote_code
    if recipe.demo.enabled:
        demo_data.fill_paths(recipe, run)
    return recipe, run


def load_stack(recipe: RecipeConfig) -> RoleStack:
    model = dataclasses.replace(recipe.model, name_or_path=resolve_model_name(recipe.model.name_or_path))
    if distributed.world().size > 1:  # each process on its own GPU (device_map={"": local device})
        model = dataclasses.replace(model, device=str(distributed.local_device(model.resolved_device())))
    return RoleStack.load(model)


def ensure_role(stack: RoleStack, run: RunDir, role: str) -> None:
    """Attach `role` from the run directory if the stack does not hold it yet."""
    if stack.has_role(role):
        return
    if not run.has_role(role):
        stage = PRODUCER[role]
        raise LoraRlhfError(
            f"this stage needs the {role!r} adapter, which {run.path} does not hold: run `lora-rlhf {stage} "
            f"--output-dir {run.path}` (with the same recipe) first"
        )
    stack.load_role(role, run.adapter(role))


def run_stages(
    recipe: RecipeConfig, run: RunDir, stages: Sequence[str], *, resume: bool = False, stack: RoleStack | None = None
) -> list[StageResult]:
    """Run `stages` in order on one stack; finished stages are skipped (their roles are loaded instead).

    A whole pipeline (sft ... eval) gets the dpo stage before eval when the recipe enables it (`with_dpo`).
    """
    stages = with_dpo(recipe, stages)
    if stack is None:
        check_data(recipe, run, stages)  # a bad local file fails before the model load, not after
        stack = load_stack(recipe)
    results = []
    for stage in stages:
        start = time.perf_counter()
        status, summary = _RUNNERS[stage](stack, recipe, run, resume)
        results.append(StageResult(stage, status, time.perf_counter() - start, summary))
        logger.info("%s", results[-1].line())
        if stage != "eval":
            distributed.barrier()  # the main process has written the stage's adapters for the next one to read
    return results


def with_dpo(recipe: RecipeConfig, stages: Sequence[str]) -> tuple[str, ...]:
    """`stages` with "dpo" before "eval" when they are a pipeline (sft through eval) and `dpo.enabled` is set."""
    stages = tuple(stages)
    if not recipe.dpo.enabled or "dpo" in stages or not {"sft", "eval"} <= set(stages):
        return stages
    at = stages.index("eval")
    return (*stages[:at], "dpo", *stages[at:])


def run_benchmarks(recipe: RecipeConfig, run: RunDir) -> StageResult:
    """`eval --benchmark`: the benchmarks of the eval section alone, on every model the run holds."""
    start = time.perf_counter()
    stack = load_stack(recipe)
    for role in ("sft", "policy", "dpo"):
        if run.has_role(role):
            stack.load_role(role, run.adapter(role))
    results = evaluate_benchmarks(stack, recipe.eval, run.path)
    return StageResult("eval", "evaluated", time.perf_counter() - start, _ifeval_summary(results))


def _ifeval_summary(results: EvalResult | None) -> dict[str, float]:
    """Each model's IFEval prompt-level loose accuracy, for the stage's summary line."""
    scores = results.ifeval.accuracy if results is not None and results.ifeval is not None else {}
    return {f"ifeval_{name}_prompt_loose": s["prompt_loose"] for name, s in scores.items()}


def _sft(stack: RoleStack, recipe: RecipeConfig, run: RunDir, resume: bool) -> tuple[str, dict]:
    if not run.check_can_train("sft", resume=resume):
        ensure_role(stack, run, "sft")
        return "skipped", {}
    _write_demo_data(recipe, run, stack=stack)
    return "trained", train_sft(stack, recipe.sft, run.path, resume=resume, report_to=recipe.report_to)


def _rm(stack: RoleStack, recipe: RecipeConfig, run: RunDir, resume: bool) -> tuple[str, dict]:
    if not run.check_can_train("rm", resume=resume):
        ensure_role(stack, run, "reward")
        return "skipped", {}
    if recipe.rm.init == "sft" or recipe.demo.enabled:
        ensure_role(stack, run, "sft")
    _write_demo_data(recipe, run, rankings_from=stack)
    return "trained", train_reward_model(stack, recipe.rm, run.path, resume=resume, report_to=recipe.report_to)


def _ppo(stack: RoleStack, recipe: RecipeConfig, run: RunDir, resume: bool) -> tuple[str, dict]:
    if not run.check_can_train("ppo", resume=resume):
        for role in STAGE_ROLES["ppo"]:
            if role != "value" or run.has_role(role):  # no value adapter after a critic-free run (issue 27)
                ensure_role(stack, run, role)
        return "skipped", {}
    ensure_role(stack, run, "sft")
    ensure_role(stack, run, "reward")
    _write_demo_data(recipe, run, stack=stack)
    gold_fn = demo_data.gold_fn(recipe, run) if recipe.demo.enabled else None
    return "trained", train_ppo(stack, recipe.ppo, run.path, resume=resume, gold_fn=gold_fn, report_to=recipe.report_to)


def _dpo(stack: RoleStack, recipe: RecipeConfig, run: RunDir, resume: bool) -> tuple[str, dict]:
    if not run.check_can_train("dpo", resume=resume):
        ensure_role(stack, run, "dpo")
        return "skipped", {}
    ensure_role(stack, run, "sft")  # the policy's start and the frozen reference
    _write_demo_data(recipe, run, rankings_from=stack)  # the RM's rankings (already there when rm ran)
    config = recipe.resolved_dpo
    return "trained", train_dpo(stack, config, run.path, resume=resume, report_to=recipe.report_to)


def _eval(stack: RoleStack, recipe: RecipeConfig, run: RunDir, resume: bool) -> tuple[str, dict]:
    for role in ("sft", "reward", "policy", "dpo"):
        if not stack.has_role(role) and run.has_role(role):
            stack.load_role(role, run.adapter(role))
    _write_demo_data(recipe, run, stack=stack)
    prompts, _ = load_prompts(recipe.eval.prompts)
    gold_fn = demo_data.gold_fn(recipe, run) if recipe.demo.enabled else None
    results = evaluate(stack, prompts, recipe.eval, run.path, gold_fn=gold_fn)
    return "evaluated", _eval_summary(results) if results is not None else {}


def _eval_summary(results: EvalResult) -> dict[str, Any]:
    """The figures of the eval stage's summary line."""
    summary: dict[str, Any] = {f"gold_{k}": v for k, v in (results.gold or {}).items()}
    rm, wins = results.rm_accuracy, results.win_rate or {}
    picked = {
        "kl": results.kl,
        "rm_accuracy": rm.labels.accuracy if rm is not None else None,
        "rm_accuracy_gold": rm.gold.accuracy if rm is not None and rm.gold is not None else None,
        "win_ppo_vs_sft": wins.get("ppo_vs_sft"),
        "win_dpo_vs_sft": wins.get("dpo_vs_sft"),
        "best_of_n_gold": results.best_of_n.gold if results.best_of_n is not None else None,
        **_ifeval_summary(results),
    }
    summary.update({k: v for k, v in picked.items() if v is not None})
    return summary


def _write_demo_data(
    recipe: RecipeConfig, run: RunDir, rankings_from: RoleStack | None = None, stack: RoleStack | None = None
) -> None:
    """The embedded demo's data files (and its rankings, sampled from `rankings_from`), by the main process.

    The IFEval-style task's demonstrations are the base's answers repaired: written where `stack` is given (sft).
    """
    if not recipe.demo.enabled:
        return
    if distributed.is_main():
        demo_data.write_task_data(recipe, run, stack=stack or rankings_from)
        if rankings_from is not None:
            demo_data.write_rankings(rankings_from, recipe, run)
    distributed.barrier()


_RUNNERS = {"sft": _sft, "rm": _rm, "ppo": _ppo, "dpo": _dpo, "eval": _eval}
