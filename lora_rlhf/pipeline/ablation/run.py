"""`lora-rlhf ablate RUN_DIR`: from one run's sft and reward, train each method at an equal budget on one base
and evaluate all on the same held-out prompts (issues 26 and 27).

Each method trains into its own run directory, RUN_DIR/ablation/<method>/, that reuses RUN_DIR's sft and reward
adapters, its data (the rankings included) and the finished stages' metrics; the project's own eval
(lora_rlhf.eval.run.evaluate) measures it against sft, and the first method's eval also draws best-of-N from
sft + reward (Gao et al. 2022). After each method, ablation.json and ablation.md hold the table and every two
methods' paired gold difference (pairs.py, from the per-prompt gold each eval keeps). Running it again
continues: a method whose adapter is finished is evaluated again, not retrained (its training cost is read back
from ablation_cost.json).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lora_rlhf.config.loader import parse_overrides
from lora_rlhf.config.recipe import RecipeConfig
from lora_rlhf.data.sources import is_local
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.eval.result import EvalResult, read_eval_result
from lora_rlhf.inference.loading import untrusted_model_section
from lora_rlhf.io import atomic_file, write_json
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.pipeline.ablation.measure import measured
from lora_rlhf.pipeline.ablation.pairs import method_pairs
from lora_rlhf.pipeline.ablation.table import best_of_n_row, method_row, render_table, sft_row
from lora_rlhf.pipeline.ablation.variants import DEFAULT_METHODS, METHODS, method_recipe, planned_budget
from lora_rlhf.pipeline.run_dir import RunDir
from lora_rlhf.pipeline.runner import load_stack, run_stages

logger = logging.getLogger(__name__)

# Roles the methods reuse from RUN_DIR, and the stage that makes each (for "run it first").
REUSED = {"sft": "sft", "reward": "rm"}
# Files of the finished stages a method's eval reads (rm.jsonl: the RM accuracy fall-back).
REUSED_METRICS = ("sft", "rm")
# The options that own these ppo keys; an override of them would blur what the rows differ in.
FLAG_KEYS = {"ptx.coef": "--ptx-coef", "ptx.data": "--ptx-path", "steps": "--steps", "advantage": "--methods"}
OVERRIDABLE = ("ppo", "dpo", "eval")
COST_FILE = "ablation_cost.json"


@dataclasses.dataclass
class AblationOptions:
    run_dir: str
    methods: Sequence[str] = DEFAULT_METHODS
    steps: int | None = None  # PPO iterations (default: the recipe's ppo.steps); DPO follows in optimizer steps
    ptx_coef: float = 1.0  # gamma_ptx of PPO-ptx (paper: 27.8)
    ptx_path: str | None = None  # default RUN_DIR/data/ptx_text.jsonl, else the recipe's ppo.ptx.data.path
    output_dir: str | None = None  # default RUN_DIR/ablation
    resume: bool = False
    overrides: Sequence[str] = ()
    trust_remote_code: bool = False  # the command line's flag: RUN_DIR's recipe.yaml cannot turn it on (issue 29)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise LoraRlhfError(f"--methods: {unknown or 'none'} not among {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise LoraRlhfError(f"--methods: {list(self.methods)} names a method twice")


def run_ablation(options: AblationOptions) -> str:
    """Train and evaluate every method on one stack; write and return the table."""
    source = RunDir(options.run_dir)
    saved = check_run(source)
    # RUN_DIR travels like data: its recipe asking for remote code is warned about and ignored (issue 29), and a
    # method's recipe.yaml never records the flag, as `prepare` does for the stages.
    model = untrusted_model_section(saved.get("model") or {}, options.trust_remote_code, source.recipe_path)
    saved = {**saved, "model": {**model, "trust_remote_code": False}}
    needs_ptx = any(METHODS[m].stage == "ppo" for m in options.methods)
    ptx_path = resolve_ptx_path(options.ptx_path, source, saved) if needs_ptx else ""
    overrides = user_overrides(options.overrides)
    out = Path(options.output_dir).expanduser() if options.output_dir else source.path / "ablation"
    recipes = {
        name: method_recipe(
            saved,
            source,
            name,
            overrides,
            steps=options.steps,
            ptx_coef=options.ptx_coef if name == "ppo_ptx" else 0.0,
            ptx_path=ptx_path,
            best_of_n=i == 0,
        )
        for i, name in enumerate(options.methods)
    }
    runs = {name: RunDir(out / name) for name in options.methods}
    for name, run in runs.items():  # before the base loads: a contradicting earlier ablation fails fast
        run.claim(recipes[name].to_dict())
        reuse_finished_stages(source, run)
    for recipe in recipes.values():
        recipe.model.trust_remote_code = options.trust_remote_code
    stack = load_stack(recipes[options.methods[0]])  # the base, once: every method and every eval share it
    for role in REUSED:
        stack.load_role(role, source.adapter(role))
    evals: dict[str, EvalResult] = {}
    costs: dict[str, dict[str, Any] | None] = {}
    for i, (name, run) in enumerate(runs.items(), 1):
        logger.info("ablation [%d/%d] %s -> %s", i, len(runs), METHODS[name].label, run.path)
        evals[name], costs[name] = run_method(stack, recipes[name], name, run, resume=options.resume)
        table = write_outputs(out, evals, costs, recipes)  # after each method: a partial table survives a stop
    logger.info("ablation: table in %s", out / "ablation.md")
    return table


def write_outputs(
    out: Path,
    evals: Mapping[str, EvalResult],
    costs: Mapping[str, Mapping[str, Any] | None],
    recipes: Mapping[str, RecipeConfig],
) -> str:
    summary = keep_earlier_methods(ablation_summary(evals, costs, recipes, out), out / "ablation.json")
    first = next(iter(recipes))  # the method whose eval drew best-of-N
    dirs = {name: Path(summary["methods"][name]["dir"]) for name in METHODS if name in summary["methods"]}
    summary["pairs"] = method_pairs(dirs, recipes[first].eval, best_of_n_from=first)
    table = render_table(summary)
    write_json(out / "ablation.json", summary)
    with atomic_file(out / "ablation.md") as handle:
        handle.write(table)
    return table


def keep_earlier_methods(summary: dict[str, Any], path: Path) -> dict[str, Any]:
    """`summary` plus the rows of methods an earlier call measured and this one did not (a call with a few
    --methods adds to the table instead of replacing it), in METHODS' order."""
    if not path.is_file():
        return summary
    earlier = json.loads(path.read_text())
    kept = {row["method"]: row for row in earlier.get("rows", []) if row.get("method") in METHODS}
    for row in summary["rows"]:
        kept.pop(row["method"], None)
    if not kept:
        return summary
    trained = {row["method"]: row for row in summary["rows"] if row["method"] in METHODS} | kept
    summary["rows"] = summary["rows"][:2] + [trained[name] for name in METHODS if name in trained]
    summary["methods"] = {name: earlier["methods"][name] for name in kept} | summary["methods"]
    return summary


def check_run(run: RunDir) -> dict[str, Any]:
    """RUN_DIR's saved recipe; a one-line error naming what is missing (recipe, a reused role)."""
    saved = run.read_recipe()
    if saved is None:
        raise LoraRlhfError(f"{run.path} is not a run directory: {run.recipe_path} is missing")
    for role, stage in REUSED.items():
        if not run.has_role(role):
            raise LoraRlhfError(
                f"{run.path} has no adapters/{role}: run `lora-rlhf {stage} --config {run.recipe_path} "
                f"--output-dir {run.path}` first"
            )
    return saved


def resolve_ptx_path(given: str | None, run: RunDir, saved: Mapping[str, Any]) -> str:
    """The PPO-ptx text as an absolute path: --ptx-path, else RUN_DIR/data/ptx_text.jsonl, else the recipe's own.

    Never the demonstrations fill_paths would default to: the ablation is about pretraining-style text.
    """
    if given:
        if not Path(given).expanduser().is_file():
            raise LoraRlhfError(f"--ptx-path {given!r} does not exist")
        return str(Path(given).expanduser().resolve())
    if run.data("ptx_text.jsonl").is_file():
        return str(run.data("ptx_text.jsonl").resolve())
    recipe_path = (((saved.get("ppo") or {}).get("ptx") or {}).get("data") or {}).get("path")
    if recipe_path:  # a demo run's recipe.yaml keeps it empty, so this is a path the user chose (file or Hub id)
        return str(Path(recipe_path).expanduser().resolve()) if is_local(recipe_path) else recipe_path
    raise LoraRlhfError(
        f"no ptx text for PPO-ptx: {run.data('ptx_text.jsonl')} does not exist and the recipe sets no "
        'ppo.ptx.data.path; pass --ptx-path FILE ({"text"} or {"prompt", "completion"} rows)'
    )


def user_overrides(items: Sequence[str]) -> dict[str, Any]:
    """KEY=VALUE overrides, limited to the sections a method trains or evaluates anew."""
    overrides = parse_overrides(items)
    if set(overrides) - set(OVERRIDABLE):
        raise LoraRlhfError(
            f"overrides must be of the ppo, dpo or eval section, not {sorted(set(overrides) - set(OVERRIDABLE))[0]!r}"
        )
    for key, flag in FLAG_KEYS.items():
        if _is_set(overrides.get("ppo", {}), key):
            raise LoraRlhfError(f"ppo.{key} is set by {flag}, not by an override")
    if _is_set(overrides.get("dpo", {}), "loss_type"):
        raise LoraRlhfError("dpo.loss_type is set by --methods, not by an override")
    return overrides


def _is_set(data: Mapping[str, Any], dotted: str) -> bool:
    """Whether nested `data` holds the dotted key (e.g. "ptx.coef")."""
    for part in dotted.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return False
        data = data[part]
    return True


def run_method(
    stack: RoleStack, recipe: RecipeConfig, name: str, run: RunDir, *, resume: bool
) -> tuple[EvalResult, dict[str, Any] | None]:
    """Train (or reuse) one method's adapter in `run`, measuring the training phase; evaluate it.

    Returns its eval.json and its training cost (None where it was trained by an earlier call that left none).
    """
    for role in ("policy", "value", "dpo"):  # the previous method's, which would otherwise be reused as this one's
        if stack.has_role(role):
            stack.remove_role(role)
    stage = METHODS[name].stage
    cost_path = run.path / COST_FILE
    if run.finished(stage):
        cost = json.loads(cost_path.read_text()) if cost_path.is_file() else None
    else:
        with measured() as cost:
            run_stages(recipe, run, (stage,), resume=resume, stack=stack)
        write_json(cost_path, cost)
    run_stages(recipe, run, ("eval",), stack=stack)
    return read_eval_result(run.eval_path), cost


def reuse_finished_stages(source: RunDir, run: RunDir) -> None:
    """Give `run` RUN_DIR's sft and reward adapters (so its sft and rm stages count as finished), its data (so
    the demo does not write it again) and the finished stages' metrics."""
    for role in REUSED:
        if not run.has_role(role):
            shutil.copytree(source.adapter(role), run.adapter(role), copy_function=_link_or_copy, dirs_exist_ok=True)
    if source.data_dir.is_dir():
        shutil.copytree(source.data_dir, run.data_dir, copy_function=_link_or_copy, dirs_exist_ok=True)
    for stage in REUSED_METRICS:
        src, dst = source.metrics(stage), run.metrics(stage)
        if src.is_file() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)  # a copy, not a link: a metrics writer appends in place


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link (adapters can be large; they and the data files are only ever replaced atomically), else copy."""
    if os.path.lexists(dst):
        return
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def ablation_summary(
    evals: Mapping[str, EvalResult],
    costs: Mapping[str, Mapping[str, Any] | None],
    recipes: Mapping[str, RecipeConfig],
    out: Path,
) -> dict[str, Any]:
    """ablation.json: the rows (sft, best-of-N, then the methods in METHODS' order) and what each method was."""
    first_name = next(iter(recipes))  # the method whose eval drew best-of-N (every eval repeats sft identically)
    first = evals[first_name]
    rows = [sft_row(first), best_of_n_row(first)]
    for name in (m for m in METHODS if m in evals):
        row = method_row(name, evals[name], costs.get(name))
        row["budget"] = planned_budget(recipes[name], name) | _logged_steps(out / name, METHODS[name].stage)
        rows.append(row)
    return {
        "prompts": first.prompts,
        "confidence": 0.95 if first.confidence is None else first.confidence,
        "win_rate_judge": first.win_rate_judge,
        "lm_text": recipes[first_name].eval.lm_text.path or None,
        "rankings": recipes[first_name].rm.data.path,
        "rows": rows,
        "methods": {name: _method_record(recipes[name], name, out) for name in evals},
    }


def _method_record(recipe: RecipeConfig, name: str, out: Path) -> dict[str, Any]:
    record: dict[str, Any] = {"dir": str(out / name), "stage": METHODS[name].stage}
    if METHODS[name].stage == "dpo":
        dpo = recipe.dpo
        record |= {"loss_type": dpo.loss_type, "beta": dpo.beta, "data": dpo.data.path}
        record |= {"batch_size": dpo.train.batch_size, "epochs": dpo.train.epochs, "max_steps": dpo.train.max_steps}
        record["learning_rate"] = dpo.train.learning_rate
    else:
        ppo = recipe.ppo
        record |= {"advantage": ppo.advantage, "ptx_coef": ppo.ptx.coef, "ptx_path": ppo.ptx.data.path}
        record |= {"steps": ppo.steps, "samples_per_prompt": ppo.samples_per_prompt}
        record["learning_rate"] = ppo.optim.policy_learning_rate
    return record


def _logged_steps(run: Path, stage: str) -> dict[str, Any]:
    """The last training step the stage's metrics logged (DPO: optimizer steps; PPO: iterations)."""
    path = RunDir(run).metrics(stage)
    if not path.is_file():
        return {}
    steps = [row.get("step") for row in map(json.loads, path.read_text().splitlines()) if row.get("split") != "eval"]
    steps = [s for s in steps if isinstance(s, int)]
    return {"logged_last_step": max(steps)} if steps else {}
