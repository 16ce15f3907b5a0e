"""How much can the RL step of recipes/ifeval.yaml give when its reward is right? (issue 25's ablation)

    python scripts/ifeval_oracle_rl.py --run runs/ifeval --output runs/ifeval_oracle

Takes a finished `lora-rlhf pipeline --config recipes/ifeval.yaml` run, and trains the recipe's own RL stage again
from its sft adapter, on the same prompts, with the same budget and settings, but rewarded by IFEval's checkers
themselves (the labeler's gold judge without its 27% disagreement: the score a perfect reward model would give)
instead of the trained reward model. Then answers IFEval's 541 prompts with that policy (greedy, the recipe's
token budget) and prints its accuracies beside the run's sft and ppo, with paired 95% intervals.

If this policy does not beat sft either, the recipe's RL budget is what stops it, not the reward model; if it
does, a better reward model (more ranked prompts, more epochs, a larger base) is the way to the bar.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from lora_rlhf.eval.ifeval import read_responses, run_ifeval
from lora_rlhf.eval.stats import paired_diff_ci
from lora_rlhf.ifeval import benchmark
from lora_rlhf.pipeline import demo_data
from lora_rlhf.pipeline.runner import load_stack, prepare
from lora_rlhf.ppo.trainer import train_ppo

COPIED = ("recipe.yaml", "data", "adapters/sft", "adapters/reward")


def copy_run(source: Path, output: Path) -> None:
    """The source run's recipe, data and sft/reward adapters into a fresh `output` (its own ppo stage)."""
    if output.exists():
        sys.exit(f"{output} exists: pick a new --output")
    for name in COPIED:
        if not (source / name).exists():
            sys.exit(f"{source} has no {name}: run `lora-rlhf pipeline --config recipes/ifeval.yaml` first")
        target = output / name
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (source / name).is_dir() else shutil.copy2)(source / name, target)


def prompt_loose(path: Path, prompts: list) -> list[float]:
    """Each IFEval prompt's loose verdict for the answers in `path` (a run's ifeval/<model>.jsonl)."""
    return benchmark.prompt_level(benchmark.score(prompts, read_responses(path, prompts)), "loose")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished run of recipes/ifeval.yaml")
    parser.add_argument("--output", type=Path, required=True, help="a new run directory for the oracle's RL")
    args = parser.parse_args()

    copy_run(args.run, args.output)
    recipe, run = prepare(str(args.output / "recipe.yaml"), [], str(args.output))
    if recipe.demo.task != "ifeval":
        sys.exit(f"{args.run} is not a run of recipes/ifeval.yaml (demo.task {recipe.demo.task!r})")
    stack = load_stack(recipe)
    for role in ("sft", "reward"):  # reward: loaded as the stage expects it, never read (reward_fn replaces it)
        stack.load_role(role, run.adapter(role))
    checkers = demo_data.gold_fn(recipe, run)
    summary = train_ppo(stack, recipe.ppo, run.path, gold_fn=checkers, reward_fn=checkers)
    print("RL against the checkers:", json.dumps(summary))

    config = recipe.eval.ifeval
    options = {"bootstrap_samples": 2000, "confidence": 0.95, "seed": 0}
    with stack.evaluating():
        section = run_ifeval(stack, {"oracle_rl": "policy"}, config, run.path, **options)
    prompts = benchmark.load_prompts(None)
    loose = {"oracle_rl": prompt_loose(run.path / "ifeval" / "oracle_rl.jsonl", prompts)}
    for name in ("sft", "ppo"):
        if (args.run / "ifeval" / f"{name}.jsonl").exists():
            loose[name] = prompt_loose(args.run / "ifeval" / f"{name}.jsonl", prompts)
    print("oracle_rl", {k: round(100 * v, 1) for k, v in section.accuracy["oracle_rl"].items()})
    print(f"answers cut at {config.max_new_tokens} tokens: {section.hit_max_new_tokens['oracle_rl']}")
    for name in ("sft", "ppo"):
        if name in loose:
            low, high = paired_diff_ci(loose["oracle_rl"], loose[name])
            diff = sum(loose["oracle_rl"]) / len(prompts) - sum(loose[name]) / len(prompts)
            print(f"oracle_rl - {name} (prompt loose): {100 * diff:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]")


if __name__ == "__main__":
    main()
