"""`lora-rlhf dpo`: Direct Preference Optimization of the dpo adapter (a copy of sft) on the RM's rankings."""

from __future__ import annotations

import argparse

from lora_rlhf.cli.common import add_stage_arguments, run_stage_command

HELP = "DPO: train the dpo adapter (a copy of sft, sft the frozen reference) on the rankings (K = 2 or K-way)"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("dpo", help=HELP, description=HELP + "; see docs/dpo.md.")
    add_stage_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_stage_command(args, ("dpo",))
