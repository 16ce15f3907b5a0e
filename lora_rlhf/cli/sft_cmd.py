"""`lora-rlhf sft`: supervised fine-tuning: train the sft adapter on demonstrations (loss on response tokens only)."""

from __future__ import annotations

import argparse

from lora_rlhf.cli.common import add_stage_arguments, run_stage_command


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sft",
        help="supervised fine-tuning: train the sft adapter on demonstrations (loss on response tokens only)",
        description="supervised fine-tuning: train the sft adapter on demonstrations (loss on response tokens only).",
    )
    add_stage_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_stage_command(args, ("sft",))
