"""What RL adds, and what the ptx term costs or saves: PPO vs PPO-ptx vs best-of-N from one run's sft and reward.

    python scripts/ablate_demo.py RUN_DIR [--steps N] [--ptx-coef X] [--ptx-path FILE] [--output-dir DIR]
                                  [--resume] [KEY=VALUE ...]

From the finished `sft` and `reward` roles of RUN_DIR (RUN_DIR/adapters/{sft,reward}, RUN_DIR/recipe.yaml),
on one base loaded once, it trains two policies, each into its own run directory under RUN_DIR/ablation/:

    ppo       plain PPO (ppo.ptx.coef=0): InstructGPT's "PPO" models
    ppo_ptx   PPO-ptx (ppo.ptx.coef=--ptx-coef on --ptx-path): InstructGPT's "PPO-ptx" models (eq. 2)

and evaluates each with the project's own eval (lora_rlhf.eval.run.evaluate, which also draws best-of-N
from sft + reward, Gao et al. 2022). The ptx text defaults to RUN_DIR/data/ptx_text.jsonl ({"text"} rows
standing in for the paper's pretraining data), else the recipe's own ppo.ptx.data.path; there is no silent
fall-back to the demonstrations. Held-out LM loss is measured on eval.lm_text, by default
RUN_DIR/data/lm_text.jsonl where it exists. KEY=VALUE overrides the ppo and eval sections only (the sft and
rm sections are fixed by the adapters being reused).

It writes RUN_DIR/ablation/ablation.md and ablation.json and prints the table: rows sft, best-of-N, PPO,
PPO-ptx; columns gold (95% CI), gold minus sft (paired 95% CI), win rate vs sft (95% CI), RM score, held-out
LM loss, KL to sft. A figure the run cannot produce (no gold judge off the demo task, no lm_text) shows as "—".
Running it again continues: a variant whose policy is finished is evaluated again, not retrained.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lora_rlhf.config.loader import build, merge, parse_overrides
from lora_rlhf.config.recipe import RecipeConfig
from lora_rlhf.data.sources import is_local
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.io import atomic_file, write_json
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.pipeline.run_dir import RunDir

logger = logging.getLogger("ablate_demo")

# Variant run directory -> the table's row label.
VARIANTS = {"ppo": "PPO", "ppo_ptx": "PPO-ptx"}
# Roles the variants reuse from RUN_DIR, and the stage that makes each (for "run it first").
REUSED = {"sft": "sft", "reward": "rm"}
# Files of the finished stages a variant's eval reads (rm.jsonl: the RM accuracy fall-back).
REUSED_METRICS = ("sft", "rm")
# The flags that own these keys; an override of them would make the two variants' difference unclear.
FLAG_KEYS = {"ptx.coef": "--ptx-coef", "ptx.data": "--ptx-path", "steps": "--steps"}
DASH = "—"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run with finished sft and rm stages")
    parser.add_argument("--steps", type=int, help="PPO iterations of each variant (default: the recipe's ppo.steps)")
    parser.add_argument(
        "--ptx-coef", type=float, default=1.0, help="gamma_ptx of the PPO-ptx variant (default 1.0; paper: 27.8)"
    )
    parser.add_argument(
        "--ptx-path", help="ptx text, {text} or {prompt, completion} rows (default: RUN_DIR/data/ptx_text.jsonl)"
    )
    parser.add_argument("--output-dir", help="where the variants and the table go (default: RUN_DIR/ablation)")
    parser.add_argument(
        "--resume", action="store_true", help="continue a variant's interrupted PPO from its last checkpoint"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="ppo or eval overrides, e.g. eval.max_prompts=16"
    )
    # Intermixed: RUN_DIR, options and KEY=VALUE pairs may come in any order.
    return parser.parse_intermixed_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    try:
        table = run_ablation(args)
    except LoraRlhfError as exc:
        print(f"ablate_demo: error: {exc}", file=sys.stderr)
        return 2
    print(table)
    return 0


def run_ablation(args: argparse.Namespace) -> str:
    """Train and evaluate both variants on one stack; write and return the table."""
    from lora_rlhf.pipeline.runner import load_stack

    source = RunDir(args.run_dir)
    saved = check_run(source)
    ptx_path = resolve_ptx_path(args.ptx_path, source, saved)
    overrides = user_overrides(args.overrides)
    out = Path(args.output_dir).expanduser() if args.output_dir else source.path / "ablation"
    recipes = {
        name: variant_recipe(
            saved, source, name, overrides, steps=args.steps, ptx_coef=args.ptx_coef, ptx_path=ptx_path
        )
        for name in VARIANTS
    }
    variants = {name: RunDir(out / name) for name in VARIANTS}
    for name, variant in variants.items():  # before the base loads: a contradicting earlier ablation fails fast
        variant.claim(recipes[name].to_dict())
        reuse_finished_stages(source, variant)
    stack = load_stack(recipes["ppo"])  # the base, once: both variants and every eval share it
    for role in REUSED:
        stack.load_role(role, source.adapter(role))
    evals = {}
    for i, (name, variant) in enumerate(variants.items(), 1):
        ppo = recipes[name].ppo
        logger.info(
            "ablation [%d/%d] %s: ptx_coef %g, %d PPO steps -> %s",
            i,
            len(VARIANTS),
            VARIANTS[name],
            ppo.ptx.coef,
            ppo.steps,
            variant.path,
        )
        evals[name] = run_variant(stack, recipes[name], variant, resume=args.resume)
    summary = ablation_summary(evals, recipes, out)
    table = render_table(summary)
    write_json(out / "ablation.json", summary)
    with atomic_file(out / "ablation.md") as handle:
        handle.write(table)
    logger.info("ablation: table in %s", out / "ablation.md")
    return table


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
    """KEY=VALUE overrides, limited to the sections a variant trains or evaluates anew."""
    overrides = parse_overrides(items)
    if set(overrides) - {"ppo", "eval"}:
        raise LoraRlhfError(
            f"overrides must be of the ppo or eval section, not {sorted(set(overrides) - {'ppo', 'eval'})[0]!r}"
        )
    for key, flag in FLAG_KEYS.items():
        if _is_set(overrides.get("ppo", {}), key):
            raise LoraRlhfError(f"ppo.{key} is set by {flag}, not by an override")
    return overrides


def _is_set(data: Mapping[str, Any], dotted: str) -> bool:
    """Whether nested `data` holds the dotted key (e.g. "ptx.coef")."""
    for part in dotted.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return False
        data = data[part]
    return True


def variant_recipe(
    saved: Mapping[str, Any],
    source: RunDir,
    name: str,
    overrides: Mapping[str, Any],
    *,
    steps: int | None,
    ptx_coef: float,
    ptx_path: str,
) -> RecipeConfig:
    """RUN_DIR's recipe + the user's overrides + the variant's ptx settings, its data paths absolute into RUN_DIR.

    Both variants name the same ptx file, so their recipes differ in ppo.ptx.coef alone (and eval.best_of_n:
    best-of-N needs only sft and reward, so the second variant does not draw it again).
    """
    ppo: dict[str, Any] = {"ptx": {"coef": 0.0 if name == "ppo" else ptx_coef, "data": {"path": ptx_path}}}
    if steps is not None:
        ppo["steps"] = steps
    update: dict[str, Any] = {"ppo": ppo}
    if name != "ppo":
        update["eval"] = {"best_of_n": 0}
    recipe = build(RecipeConfig, merge(merge(saved, overrides), update))
    if recipe.demo.enabled:
        from lora_rlhf.pipeline import demo_data

        # Filled from RUN_DIR, not from the variant: the variants must train and evaluate on the run's own data.
        demo_data.fill_paths(recipe, source)
    if not recipe.eval.lm_text.path and source.data("lm_text.jsonl").is_file():
        recipe.eval.lm_text.path = str(source.data("lm_text.jsonl").resolve())
    return recipe


def run_variant(stack: RoleStack, recipe: RecipeConfig, variant: RunDir, *, resume: bool) -> dict[str, Any]:
    """Train (or reuse) one variant's policy and value in `variant`, evaluate it, and return its eval.json."""
    from lora_rlhf.pipeline.runner import run_stages

    for role in ("policy", "value"):  # the previous variant's, which would otherwise be reused as this one's
        if stack.has_role(role):
            stack.remove_role(role)
    run_stages(recipe, variant, ("ppo", "eval"), resume=resume, stack=stack)
    return json.loads(variant.eval_path.read_text())


def reuse_finished_stages(source: RunDir, variant: RunDir) -> None:
    """Give `variant` RUN_DIR's sft and reward adapters (so its sft and rm stages count as finished), its demo
    data (so the demo does not write it again) and the finished stages' metrics."""
    for role in REUSED:
        if not variant.has_role(role):
            shutil.copytree(
                source.adapter(role), variant.adapter(role), copy_function=_link_or_copy, dirs_exist_ok=True
            )
    if source.data_dir.is_dir():
        shutil.copytree(source.data_dir, variant.data_dir, copy_function=_link_or_copy, dirs_exist_ok=True)
    for stage in REUSED_METRICS:
        src, dst = source.metrics(stage), variant.metrics(stage)
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
    evals: Mapping[str, Mapping[str, Any]], recipes: Mapping[str, RecipeConfig], out: Path
) -> dict[str, Any]:
    """ablation.json: the four rows, and what each variant was."""
    first = evals["ppo"]  # sft and best-of-N come from its eval (the second variant's eval repeats sft identically)
    rows = [sft_row(first), best_of_n_row(first)] + [policy_row(label, evals[name]) for name, label in VARIANTS.items()]
    variants = {
        name: {
            "dir": str(out / name),
            "ptx_coef": recipes[name].ppo.ptx.coef,
            "ptx_path": recipes[name].ppo.ptx.data.path,
            "steps": recipes[name].ppo.steps,
        }
        for name in VARIANTS
    }
    return {
        "prompts": first.get("prompts"),
        "confidence": first.get("confidence", 0.95),
        "win_rate_judge": first.get("win_rate_judge"),
        "lm_text": recipes["ppo"].eval.lm_text.path or None,
        "rows": rows,
        "variants": variants,
    }


def _get(results: Mapping[str, Any], *keys: str) -> Any:
    """results[k1][k2]..., or None where any level is missing."""
    for key in keys:
        if not isinstance(results, Mapping) or results.get(key) is None:
            return None
        results = results[key]
    return results


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def sft_row(results: Mapping[str, Any]) -> dict[str, Any]:
    # KL of sft to itself is 0 by definition: it is the reference (docs/design.md, "Roles on one base").
    return {
        "model": "sft",
        "gold": _get(results, "gold", "sft"),
        "gold_ci": _get(results, "gold_mean_ci", "sft"),
        "gold_minus_sft": None,
        "gold_minus_sft_ci": None,
        "win_rate_vs_sft": None,
        "win_rate_vs_sft_ci": None,
        "reward": _get(results, "reward", "sft"),
        "lm_loss": _get(results, "lm_loss", "sft"),
        "kl": 0.0,
    }


def best_of_n_row(results: Mapping[str, Any]) -> dict[str, Any]:
    """Best-of-N: its weights are sft's (same LM loss); its KL to sft is at most log N - (N-1)/N nats
    (the analytic bound of Stiennon et al. 2020 and Gao et al. 2022). No per-prompt picks are kept, so no win rate."""
    n, prompts = _get(results, "best_of_n", "n"), _get(results, "best_of_n", "prompts")
    # Best-of-N may run on the first eval prompts only: compare with sft's greedy gold on those same prompts.
    baseline = _get(results, "best_of_n", "gold_sft_greedy")
    if baseline is None:  # a sampled eval: sft's mean over its samples on the same prompts
        baseline = _get(results, "best_of_n", "gold_sft_samples")
    scope = f", first {prompts} prompts" if prompts not in (None, results.get("prompts")) else ""
    return {
        "model": f"best-of-{n or 'N'} (sft + RM{scope})",
        "gold": _get(results, "best_of_n", "gold"),
        "gold_ci": _get(results, "best_of_n", "gold_ci"),
        "gold_minus_sft": _minus(
            _get(results, "best_of_n", "gold"), baseline if baseline is not None else _get(results, "gold", "sft")
        ),
        "gold_minus_sft_ci": _get(results, "best_of_n_ci", "bon_minus_sft"),
        "win_rate_vs_sft": None,
        "win_rate_vs_sft_ci": None,
        "reward": _get(results, "best_of_n", "reward"),
        "lm_loss": _get(results, "lm_loss", "sft") if n else None,
        "kl": math.log(n) - (n - 1) / n if n else None,
        "kl_is_bound": True,
    }


def policy_row(label: str, results: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "model": label,
        "gold": _get(results, "gold", "ppo"),
        "gold_ci": _get(results, "gold_mean_ci", "ppo"),
        "gold_minus_sft": _minus(_get(results, "gold", "ppo"), _get(results, "gold", "sft")),
        "gold_minus_sft_ci": _get(results, "gold_ci", "ppo_minus_sft"),
        "win_rate_vs_sft": _get(results, "win_rate", "ppo_vs_sft"),
        "win_rate_vs_sft_ci": _get(results, "win_rate_ci", "ppo_vs_sft"),
        "reward": _get(results, "reward", "ppo"),
        "lm_loss": _get(results, "lm_loss", "ppo"),
        "kl": results.get("kl"),
    }


def _fmt(value: float | None, interval: Sequence[float] | None = None, *, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    return text + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def render_table(summary: Mapping[str, Any]) -> str:
    """ablation.md: one markdown table and the notes a reader needs to trust it."""
    level = f"{summary['confidence']:.0%}"
    header = [
        "model",
        f"gold [{level} CI]",
        f"gold − sft [paired {level} CI]",
        f"win rate vs sft [{level} CI]",
        "RM score",
        "held-out LM loss",
        "KL to sft (nats)",
    ]
    lines = [
        "# Ablation: what RL adds, what ptx costs or saves",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in summary["rows"]:
        kl = _fmt(row["kl"])
        cells = [
            row["model"],
            _fmt(row["gold"], row["gold_ci"]),
            _fmt(row["gold_minus_sft"], row["gold_minus_sft_ci"], signed=True),
            _fmt(row["win_rate_vs_sft"], row["win_rate_vs_sft_ci"]),
            _fmt(row["reward"]),
            _fmt(row["lm_loss"]),
            f"≤ {kl}" if row.get("kl_is_bound") and kl != DASH else kl,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + _notes(summary)) + "\n"


def _notes(summary: Mapping[str, Any]) -> list[str]:
    ptx = summary["variants"]["ppo_ptx"]
    judge = {"gold": "the gold judge", "reward_model": "the reward model (no gold judge)"}.get(
        summary["win_rate_judge"], DASH
    )
    return [
        f"- {summary['prompts']} held-out prompts; win rates judged by {judge}; intervals are bootstrap over prompts, "
        "paired where two models are compared.",
        f"- PPO: ppo.ptx.coef 0; PPO-ptx: ppo.ptx.coef {ptx['ptx_coef']:g} on {ptx['ptx_path']}; "
        f"PPO steps: {ptx['steps']} each, from the same sft and reward adapters.",
        "- best-of-N samples N answers from sft and keeps the RM's favourite: its weights are sft's (same LM loss), "
        "its KL is the bound log N − (N−1)/N.",
        f"- LM loss: mean token NLL on {summary['lm_text'] or 'no held-out text (set eval.lm_text.path)'}; "
        "KL: mean over prompts of the summed per-token KL(policy ‖ sft) on the policy's own answers.",
        "- " + DASH + ": not measurable in this run (e.g. no gold judge off the demo task).",
    ]


if __name__ == "__main__":
    sys.exit(main())
