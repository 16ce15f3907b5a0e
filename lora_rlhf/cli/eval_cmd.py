"""`lora-rlhf eval --run DIR`: base vs sft vs ppo on held-out prompts -> eval.json, report.md, plots/."""

from __future__ import annotations

import argparse

DESCRIPTION = (
    "Evaluate a run: generate with the bare base, the sft adapter and the PPO policy on held-out prompts; "
    "write eval.json (gold score where the task has a gold judge, win rates, RM score, KL to the reference, "
    "RM accuracy), report.md and plots/ into the run directory."
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a run: eval.json, report.md, plots/", description=DESCRIPTION)
    parser.add_argument(
        "--run",
        "--output-dir",
        dest="run",
        metavar="DIR",
        required=True,
        help="the run directory (holds recipe.yaml and adapters/)",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let the base model's repository run its own Python code (a run's recipe.yaml cannot turn this on)",
    )
    parser.add_argument(
        "--benchmark",
        choices=["ifeval"],
        help="run only this benchmark (IFEval: every model answers its 541 prompts) and add its section to the "
        "run's eval.json and report.md; without it, eval runs what the recipe's eval section asks "
        "(eval.ifeval.enabled=true adds IFEval there)",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="overrides of the eval section only, e.g. eval.max_prompts=16"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lora_rlhf.config.loader import build, merge, parse_overrides
    from lora_rlhf.config.recipe import RecipeConfig
    from lora_rlhf.errors import LoraRlhfError
    from lora_rlhf.inference.loading import untrusted_model_section
    from lora_rlhf.pipeline.lock import run_dir_lock
    from lora_rlhf.pipeline.run_dir import RunDir
    from lora_rlhf.pipeline.runner import run_benchmarks, run_stages
    from lora_rlhf.train import distributed

    run_dir = RunDir(args.run)
    saved = run_dir.read_recipe()
    if saved is None:
        raise LoraRlhfError(f"{run_dir.path} is not a run directory: recipe.yaml is missing")
    overrides = parse_overrides(args.overrides)
    if set(overrides) - {"eval"}:
        raise LoraRlhfError(
            f"eval takes overrides of the eval section only, not {sorted(set(overrides) - {'eval'})[0]!r}"
        )
    saved["model"] = untrusted_model_section(saved.get("model") or {}, args.trust_remote_code, run_dir.recipe_path)
    recipe = build(RecipeConfig, merge(saved, overrides))
    with run_dir_lock(run_dir.path, main_process=distributed.is_main()):
        if recipe.demo.enabled:
            from lora_rlhf.pipeline import demo_data

            demo_data.fill_paths(recipe, run_dir)
        if args.benchmark:
            recipe.eval.ifeval.enabled = True
            result = run_benchmarks(recipe, run_dir)
        else:
            (result,) = run_stages(recipe, run_dir, ("eval",))
    if not distributed.is_main():
        return 0
    print(result.line())
    print(f"report: {run_dir.report}")
    return 0
