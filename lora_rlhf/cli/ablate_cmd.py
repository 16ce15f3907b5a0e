"""`lora-rlhf ablate RUN_DIR`: from one run's sft and reward, PPO, PPO-ptx, critic-free RL and DPO at an equal
budget, evaluated with sft and best-of-N on the same held-out prompts, in one table."""

from __future__ import annotations

import argparse

from lora_rlhf.pipeline.ablation import DEFAULT_METHODS, METHODS, AblationOptions, run_ablation

HELP = "train every method from one run's sft and reward at an equal budget and compare them in one table"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "ablate",
        help=HELP,
        description=HELP
        + " (RUN_DIR/ablation/ablation.md and ablation.json; each method in RUN_DIR/ablation/<method>/; "
        "rerunning continues). Rows: sft, best-of-N, then the --methods.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run with finished sft and rm stages")
    parser.add_argument(
        "--methods",
        type=lambda text: tuple(m.strip() for m in text.split(",") if m.strip()),
        default=DEFAULT_METHODS,
        help=f"comma-separated, from {', '.join(METHODS)} (default: {','.join(DEFAULT_METHODS)})",
    )
    parser.add_argument(
        "--steps", type=int, help="PPO iterations (default: the recipe's ppo.steps); DPO gets as many optimizer steps"
    )
    parser.add_argument("--ptx-coef", type=float, default=1.0, help="gamma_ptx of PPO-ptx (default 1.0; paper: 27.8)")
    parser.add_argument(
        "--ptx-path", help="ptx text, {text} or {prompt, completion} rows (default: RUN_DIR/data/ptx_text.jsonl)"
    )
    parser.add_argument("--output-dir", help="where the methods and the table go (default: RUN_DIR/ablation)")
    parser.add_argument("--resume", action="store_true", help="continue a method's interrupted training")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let the base model's repository run its own Python code (RUN_DIR's recipe.yaml cannot turn this on)",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="ppo, dpo or eval overrides, e.g. eval.max_prompts=16"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = AblationOptions(
        run_dir=args.run_dir,
        methods=args.methods,
        steps=args.steps,
        ptx_coef=args.ptx_coef,
        ptx_path=args.ptx_path,
        output_dir=args.output_dir,
        resume=args.resume,
        overrides=args.overrides,
        trust_remote_code=args.trust_remote_code,
    )
    print(run_ablation(options))
    return 0
