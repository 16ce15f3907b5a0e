"""`lora-rlhf merge`: base (unquantized, bf16/fp16/fp32) + one adapter -> a standalone transformers model folder."""

from __future__ import annotations

import argparse

DESCRIPTION = (
    "Merge one adapter into its base, reloaded unquantized in --dtype, and write a standalone transformers model "
    "folder (safetensors + config + tokenizer) for vLLM, TGI or llama.cpp's convert_hf_to_gguf.py."
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "merge", help="merge an adapter into the base: a standalone model folder", description=DESCRIPTION
    )
    parser.add_argument("--adapter", metavar="SOURCE", help="adapter folder or Hub id owner/repo[/subfolder]")
    parser.add_argument("--run", metavar="DIR", help="a run directory: merge its --role (default policy) into its base")
    parser.add_argument("--role", default="policy", help="with --run: the role to merge (default policy)")
    parser.add_argument(
        "--base", metavar="MODEL", help="base model (default: the run's, else the adapter's base_model_name_or_path)"
    )
    parser.add_argument("--output", "-o", required=True, metavar="DIR", help="the merged model folder to write")
    parser.add_argument(
        "--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16", help="dtype of the merged weights"
    )
    parser.add_argument(
        "--verify", action="store_true", help="then compare its logits with adapter-on-base (float32) on a few prompts"
    )
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lora_rlhf.errors import LoraRlhfError
    from lora_rlhf.inference.loading import run_base_name, warn_run_remote_code
    from lora_rlhf.inference.merge import TOLERANCE, merge_adapter, merge_difference

    if bool(args.adapter) == bool(args.run):
        raise LoraRlhfError("give exactly one of --adapter SOURCE or --run DIR")
    if args.run:
        warn_run_remote_code(args.run, args.trust_remote_code)
    adapter = args.adapter or str(_run_role(args.run, args.role))
    base = args.base or (run_base_name(args.run) if args.run else None)
    output = merge_adapter(adapter, args.output, base=base, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    print(f"merged model written to {output}")
    if args.verify:
        texts = ["Hello, how are you?", "Sort the numbers 3 1 2.", "Write one sentence about the sea."]
        check = merge_difference(output, adapter, texts, base=base)
        verdict = "within" if check.within(args.dtype) else "OUTSIDE"
        print(
            f"max |logit difference| vs adapter-on-base (float32): {check.max_abs_diff:.3g} at logit scale "
            f"{check.logit_scale:.3g}, relative {check.relative:.3g} "
            f"({verdict} the {args.dtype} tolerance {TOLERANCE[args.dtype]:g})"
        )
        return 0 if verdict == "within" else 1
    return 0


def _run_role(run_dir: str, role: str):
    from lora_rlhf.errors import LoraRlhfError
    from lora_rlhf.inference.sources import run_roles

    roles = run_roles(run_dir)
    if role not in roles:
        raise LoraRlhfError(f"run {run_dir} has no {role!r} adapter (it holds: {', '.join(roles)})")
    return roles[role]
