"""`lora-rlhf export-reward`: a run's reward model as a transformers *ForSequenceClassification folder."""

from __future__ import annotations

import argparse

DESCRIPTION = (
    "Export the reward role of RUN_DIR (or a reward adapter folder) as a standard checkpoint: the LoRA merged "
    "into the base (reloaded unquantized) with the scalar head as the one-label `score` layer, the tokenizer "
    "(pad token, right padding) and a model card; loadable by AutoModelForSequenceClassification, "
    'pipeline("text-classification") and TRL\'s GRPO/RLOO reward_funcs. --peft-adapter also writes it as a SEQ_CLS '
    "PEFT adapter in OUT/peft_adapter/."
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-reward", help="export the reward model as a *ForSequenceClassification folder", description=DESCRIPTION
    )
    parser.add_argument("source", metavar="RUN_DIR", help="a run directory (or a reward adapter folder)")
    parser.add_argument("--output", "-o", required=True, metavar="OUT", help="the folder to write (new or empty)")
    parser.add_argument("--base", metavar="MODEL", help="base model (default: the run's, else the adapter's)")
    parser.add_argument(
        "--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16", help="dtype of the written weights"
    )
    parser.add_argument(
        "--peft-adapter", action="store_true", help="also write OUT/peft_adapter/: a SEQ_CLS PEFT adapter"
    )
    parser.add_argument(
        "--bias",
        choices=["auto", "fold", "drop"],
        default="auto",
        help="the head's bias: auto = exact where the architecture can hold it, else left out and recorded as "
        "config.lora_rlhf_reward_offset; fold = error where it cannot; drop = always left out (recorded)",
    )
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lora_rlhf.export import export_reward
    from lora_rlhf.inference.loading import warn_run_remote_code

    warn_run_remote_code(args.source, args.trust_remote_code)  # a run directory's recipe; an adapter folder has none
    result = export_reward(
        args.source,
        args.output,
        base=args.base,
        dtype=args.dtype,
        peft_adapter=args.peft_adapter,
        bias=args.bias,
        trust_remote_code=args.trust_remote_code,
    )
    print(f"reward model written to {result.folder} ({result.architecture}, pad token {result.pad_token!r})")
    if result.adapter is not None:
        print(f"PEFT SEQ_CLS adapter written to {result.adapter}")
    if result.bias.offset:
        print(f"note: scores are lower by the head's bias {result.bias.offset:g} (config.lora_rlhf_reward_offset)")
    return 0
