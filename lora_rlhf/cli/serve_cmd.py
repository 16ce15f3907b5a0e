"""`lora-rlhf serve`: an OpenAI-compatible HTTP server on one base with many adapters."""

from __future__ import annotations

import argparse
import os

from lora_rlhf.cli.inference_args import add_model_arguments, load_registry

DESCRIPTION = (
    "Serve /v1/models, /v1/completions and /v1/chat/completions (streaming included); the request's `model` "
    "picks the adapter, 'base' the bare base. POST /v1/adapters {name, path} and DELETE /v1/adapters/NAME load and "
    "unload adapters at run time, from --allowed-root folders only. Binds to 127.0.0.1 unless --host says otherwise."
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="OpenAI-compatible server with hot-swapped adapters", description=DESCRIPTION)
    add_model_arguments(parser)
    http = parser.add_argument_group("server")
    http.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    http.add_argument("--port", type=int, default=8000)
    http.add_argument("--allowed-root", action="append", default=[], metavar="DIR",
                      help="folder adapters may be loaded from at run time (repeatable; default: the run's adapters/)")
    http.add_argument("--allow-hub", action="store_true", help="let POST /v1/adapters download Hub ids")
    http.add_argument("--api-key", default=os.environ.get("LORA_RLHF_API_KEY"),
                      help="require `Authorization: Bearer KEY` (default: $LORA_RLHF_API_KEY, else no key)")
    http.add_argument("--max-tokens", type=int, default=256, help="response budget of chat requests that set none")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lora_rlhf.serve import create_app, run_server

    registry = load_registry(args)
    roots = list(args.allowed_root)
    if not roots and args.run:
        roots = [str(Path(args.run) / "adapters")]
    app = create_app(registry, allowed_roots=roots, allow_hub=args.allow_hub, api_key=args.api_key,
                     default_max_tokens=args.max_tokens)
    print(f"serving {', '.join(registry.names)} on http://{args.host}:{args.port}/v1")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print("warning: listening beyond this machine without --api-key")
    run_server(app, host=args.host, port=args.port)
    return 0
