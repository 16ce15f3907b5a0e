"""`lora-rlhf ppo`: PPO-ptx: train policy and value against the frozen reward model with a KL penalty to sft."""

from __future__ import annotations

import argparse

from lora_rlhf.cli.common import add_stage_arguments, run_stage_command


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "ppo",
        help="PPO-ptx: train policy and value against the frozen reward model with a KL penalty to sft",
        description="PPO-ptx: train policy and value against the frozen reward model with a KL penalty to sft.",
    )
    add_stage_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_stage_command(args, ("ppo",))
