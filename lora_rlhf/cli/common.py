"""Arguments shared by the stage subcommands (sft, rm, ppo, pipeline)."""

from __future__ import annotations

import argparse

OVERRIDES_HELP = (
    "dotted overrides of the recipe, e.g. ppo.rewards.kl_coef=0.05 model.quantization=nf4 sft.data.path=demos.jsonl; "
    "values are parsed as YAML (numbers, true/false, null, [lists])"
)


def add_stage_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="RECIPE.yaml",
        help="recipe file (sections model, demo, sft, rm, ppo, eval); default: the embedded demo, recipes/demo.yaml",
    )
    parser.add_argument(
        "--output-dir",
        metavar="DIR",
        help="run directory (default: runs/<recipe name>); stages write adapters/, metrics/, checkpoints/ here",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted stage from its last checkpoint (finished stages are never retrained)",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let the base model's repository run its own Python code (a recipe or an override cannot turn this on)",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)


def run_stage_command(args: argparse.Namespace, stages: tuple[str, ...]) -> int:
    """Shared body of `sft`, `rm`, `ppo` and `pipeline`: lock and prepare the run dir, run the stages, print a
    summary.
    """
    import time

    from lora_rlhf.errors import LoraRlhfError
    from lora_rlhf.pipeline.lock import run_dir_lock
    from lora_rlhf.pipeline.run_dir import RunDir
    from lora_rlhf.pipeline.runner import default_output_dir, prepare, run_stages
    from lora_rlhf.train import distributed

    start = time.perf_counter()
    run_dir = RunDir(args.output_dir or default_output_dir(args.config))
    path = run_dir.path
    if args.resume:
        run_dir.check_resume(stages)  # before anything is created: a mistyped directory stays absent
    main = distributed.is_main()  # under `accelerate launch`, the one process that writes the run directory
    if main:
        run_dir.create()
    with run_dir_lock(path, main_process=main):
        recipe, run = prepare(args.config, args.overrides, str(path), trust_remote_code=args.trust_remote_code)
        if len(stages) == 1 and run.finished(stages[0]):
            raise LoraRlhfError(
                f"stage {stages[0]} already finished in {run.path}: nothing to do "
                "(use a new --output-dir to train again)"
            )
        results = run_stages(recipe, run, stages, resume=args.resume)
    if not main:
        return 0
    print(f"\n{'stage':<5} {'status':<9} {'time':>9}  summary")
    for result in results:
        print(result.line())
    print(f"total {time.perf_counter() - start:.1f} s; outputs in {run.path}")
    if run.report.exists() and "eval" in stages:
        print(f"report: {run.report}")
    return 0
