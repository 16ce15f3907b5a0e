"""`lora-rlhf pipeline`: the whole recipe, sft -> rm -> ppo -> eval, on one base loaded once."""

from __future__ import annotations

import argparse

from lora_rlhf.cli.common import add_stage_arguments, run_stage_command

DESCRIPTION = (
    "Run the whole InstructGPT recipe on one base: SFT, reward model, PPO-ptx, then evaluation. "
    "With no arguments it runs the embedded demo (SmolLM2-135M-Instruct in NF4 on verifiable "
    "instruction tasks with a programmatic labeler) into runs/demo. Finished stages are skipped."
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("pipeline", help="sft -> rm -> ppo -> eval in one go", description=DESCRIPTION)
    add_stage_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_stage_command(args, ("sft", "rm", "ppo", "eval"))
