"""`lora-rlhf {sft,rm,ppo,pipeline,eval,generate,serve,merge,push,plan}`.

Each subcommand lives in its own module exposing `add_parser(subparsers)` (which registers the
subcommand and sets `func` to a `run(args) -> int`). A LoraRlhfError is printed as one line on
stderr with exit code 2, never as a stack trace.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from lora_rlhf.errors import LoraRlhfError

# Subcommand modules, in the order `--help` lists them.
COMMANDS = (
    "sft",
    "rm",
    "ppo",
    "dpo",
    "pipeline",
    "eval",
    "ablate",
    "generate",
    "serve",
    "merge",
    "export_reward",
    "push",
    "plan",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lora-rlhf",
        description=(
            "InstructGPT's recipe (SFT, ranking reward model, PPO-ptx) with one LoRA adapter per role on one base."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"lora_rlhf.cli.{name}_cmd")
        except ModuleNotFoundError as exc:
            if exc.name != f"lora_rlhf.cli.{name}_cmd":
                raise
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("bitsandbytes", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except LoraRlhfError as exc:
        _close_progress_bars()
        print(f"lora-rlhf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close_progress_bars()
        print(f"lora-rlhf {args.command}: interrupted", file=sys.stderr)
        return 130


def _close_progress_bars() -> None:
    """Clear progress bars an error left open, so nothing follows the error line (a bar closed later, when
    garbage-collected, would print itself after it).
    """
    tqdm = sys.modules.get("tqdm")
    if tqdm is None:
        return
    for bar in list(getattr(tqdm.tqdm, "_instances", ())):
        bar.leave = False
        bar.close()


if __name__ == "__main__":
    sys.exit(main())
