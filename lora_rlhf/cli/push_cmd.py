"""`lora-rlhf push`: publish an adapter folder, or every role of a run, to the Hugging Face Hub."""

from __future__ import annotations

import argparse

DESCRIPTION = (
    "Upload an adapter folder (to the repo's root) or a run directory (each role in <role>/, with eval.json, "
    "recipe.yaml, report.md and plots) with generated model cards. The token is huggingface_hub's: `hf auth login` "
    "or HF_TOKEN; HF_ENDPOINT selects another Hub. Local files are never modified."
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("push", help="publish adapters to the Hugging Face Hub", description=DESCRIPTION)
    parser.add_argument("source", metavar="DIR", help="an adapter folder or a run directory")
    parser.add_argument(
        "--repo-id", required=True, metavar="OWNER/NAME", help="the Hub model repository (created if missing)"
    )
    parser.add_argument(
        "--role", action="append", default=[], help="with a run directory: only these roles (repeatable)"
    )
    parser.add_argument(
        "--private", action="store_true", help="create the repository private (an existing repo keeps its visibility)"
    )
    parser.add_argument("--commit-message", "-m", help="commit message (default: 'Upload N files with lora_rlhf')")
    parser.add_argument(
        "--base-model",
        metavar="HUB_ID",
        help="the base's Hub id for the card and adapter_config.json (default: from the run)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lora_rlhf.hub import plan_push, push

    plan = plan_push(args.source, args.repo_id, roles=args.role or None, base_model=args.base_model)
    total = sum(u.size for u in plan.files)
    header = "would upload" if args.dry_run else "uploading"
    print(
        f"{header} {len(plan.files)} files ({total:,} bytes) to {plan.repo_id}{' (private)' if args.private else ''}:"
    )
    for line in plan.lines():
        print(f"  {line}")
    if args.dry_run:
        return 0
    url = push(plan, private=args.private, commit_message=args.commit_message)
    print(f"pushed: {url}")
    return 0
