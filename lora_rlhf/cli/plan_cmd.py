"""`lora-rlhf plan`: every stage's predicted memory peak, from the model's config and the recipe alone."""

from __future__ import annotations

import argparse

from lora_rlhf.cli.common import OVERRIDES_HELP

DESCRIPTION = (
    "Predict the memory peak of every phase of a recipe (sft step, rm step, ppo generate/score/train, eval) "
    "from the model's config only: nothing but config.json is read, no weights are downloaded. Says whether "
    "the recipe fits --gpu-memory and, if not, which single knob brings each phase under."
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan", help="predict each stage's memory peak before anything is downloaded", description=DESCRIPTION
    )
    parser.add_argument(
        "--config", metavar="RECIPE.yaml", help="recipe file; default: the embedded demo, recipes/demo.yaml"
    )
    parser.add_argument("--gpu-memory", metavar="SIZE", help="memory to fit in, e.g. 24GiB (GiB when no unit is given)")
    parser.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda",
        help="where the recipe will run: sets what quantization/dtype 'auto' become (default cuda)",
    )
    parser.add_argument(
        "--model-config",
        metavar="PATH",
        help="a config.json or model folder to plan for instead of model.name_or_path (offline planning)",
    )
    parser.add_argument(
        "--responses-per-prompt",
        type=int,
        metavar="K",
        help="ranked responses per RM prompt (default: demo.responses_per_prompt, else 2 for pairs)",
    )
    parser.add_argument("--trust-remote-code", action="store_true", help="let the model repository's config code run")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lora_rlhf.config.recipe import load_recipe
    from lora_rlhf.inference.loading import untrusted_model_section
    from lora_rlhf.plan import format_plan, model_shape, plan_recipe
    from lora_rlhf.plan.phases import parse_size

    budget = parse_size(args.gpu_memory) if args.gpu_memory else None
    recipe = load_recipe(args.config, args.overrides)
    # Only the flag runs a repository's code; a recipe asking for it is told so, as every command tells it (issue 29).
    asked = {"name_or_path": recipe.model.name_or_path, "trust_remote_code": recipe.model.trust_remote_code}
    untrusted_model_section(asked, args.trust_remote_code, args.config or "the recipe's overrides")
    shape = model_shape(args.model_config or recipe.model.name_or_path, trust_remote_code=args.trust_remote_code)
    plan = plan_recipe(recipe, shape, device=args.device, budget=budget, responses_per_prompt=args.responses_per_prompt)
    print(format_plan(plan))
    return 0 if plan.fits else 1
