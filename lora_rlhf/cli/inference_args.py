"""Arguments shared by `generate` and `serve`: which base to load and which adapters to attach."""

from __future__ import annotations

import argparse

ADAPTER_HELP = (
    "attach an adapter: NAME=SOURCE, where SOURCE is a PEFT adapter folder or a Hub id owner/repo[/subfolder] "
    "(repeatable; a bare SOURCE is named after its last path part)"
)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("model")
    source.add_argument("--base", metavar="MODEL", help="base model: folder, Hub id, demo:smollm2 or tiny:<arch>")
    source.add_argument("--run", metavar="DIR", help="a run directory: its recipe's base and all its adapters (roles)")
    source.add_argument("--adapter", action="append", default=[], metavar="NAME=SOURCE", help=ADAPTER_HELP)
    source.add_argument(
        "--quantization",
        choices=["auto", "nf4", "int8", "none"],
        help="how to load the base (default: the run's, else auto)",
    )
    source.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    source.add_argument(
        "--dtype", dest="compute_dtype", choices=["auto", "bfloat16", "float16", "float32"], help="compute dtype"
    )
    source.add_argument("--revision", help="Hub revision of the adapters given as Hub ids")
    source.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let the base model's repository run its own Python code (a run's recipe.yaml cannot turn this on)",
    )


def load_registry(args: argparse.Namespace):
    """An AdapterRegistry on the base of --run or --base, with the run's roles and every --adapter attached."""
    from lora_rlhf.errors import LoraRlhfError
    from lora_rlhf.inference import AdapterRegistry
    from lora_rlhf.inference.loading import base_config, base_config_from_run
    from lora_rlhf.inference.sources import parse_named_source

    if bool(args.base) == bool(args.run):
        raise LoraRlhfError("give exactly one of --base MODEL or --run DIR")
    options = {
        "quantization": args.quantization,
        "device": args.device,
        "compute_dtype": args.compute_dtype,
        "trust_remote_code": args.trust_remote_code or None,
    }
    config = base_config_from_run(args.run, **options) if args.run else base_config(args.base, **options)
    registry = AdapterRegistry.load(config)
    if args.run:
        registry.attach_run(args.run)
    for text in args.adapter:
        name, source = parse_named_source(text)
        registry.attach(name, source, revision=args.revision)
    return registry
