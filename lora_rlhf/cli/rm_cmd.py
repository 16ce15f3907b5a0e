"""`lora-rlhf rm`: reward model: train the reward adapter and head on K-way rankings (all C(K,2) pairs per prompt)."""

from __future__ import annotations

import argparse

from lora_rlhf.cli.common import add_stage_arguments, run_stage_command


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "rm",
        help="reward model: train the reward adapter and head on K-way rankings (all C(K,2) pairs per prompt)",
        description="reward model: train the reward adapter and head on K-way rankings (all C(K,2) pairs per prompt).",
    )
    add_stage_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_stage_command(args, ("rm",))
