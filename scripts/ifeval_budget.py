"""Does a larger response budget change the bare base's IFEval score? (issue 25, README's IFEval section)

    python scripts/ifeval_budget.py --answers docs/ifeval/ifeval/base.jsonl --prompts 200 --max-new-tokens 512

Answers IFEval's first N prompts with the base of recipes/ifeval.yaml at the larger budget, and rescores the
answers a run already wrote (at its smaller budget) on the same prompts; prints both accuracies.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from lora_rlhf.config.recipe import RECIPES, load_recipe
from lora_rlhf.eval.config import IFEvalConfig
from lora_rlhf.eval.ifeval import read_responses, run_ifeval
from lora_rlhf.ifeval import benchmark
from lora_rlhf.pipeline.runner import load_stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=Path, required=True, help="a run's ifeval/base.jsonl")
    parser.add_argument("--prompts", type=int, default=200, help="IFEval's first N prompts")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--recipe", default=str(RECIPES / "ifeval.yaml"))
    args = parser.parse_args()

    prompts = benchmark.load_prompts(None)[: args.prompts]
    saved = read_responses(args.answers, prompts)
    before = benchmark.accuracies(benchmark.score(prompts, saved))
    stack = load_stack(load_recipe(args.recipe, []))
    config = IFEvalConfig(enabled=True, max_prompts=args.prompts, max_new_tokens=args.max_new_tokens)
    with tempfile.TemporaryDirectory() as out, stack.evaluating():
        options = {"bootstrap_samples": 1000, "confidence": 0.95, "seed": 0}
        section = run_ifeval(stack, {"base": "base"}, config, Path(out), **options)
    after = section.accuracy["base"]
    for label, scores in (("saved answers", before), (f"{args.max_new_tokens} tokens", after)):
        table = {k: round(100 * v, 1) for k, v in scores.items()}
        print(f"{label}: {table}, average prompt/inst strict {100 * benchmark.headline(scores):.1f}")
    print(f"answers that hit {args.max_new_tokens} tokens: {section.hit_max_new_tokens['base']} of {len(prompts)}")


if __name__ == "__main__":
    main()
