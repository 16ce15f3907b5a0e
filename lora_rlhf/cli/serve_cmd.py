"""`lora-rlhf serve`: an OpenAI-compatible HTTP server on one base with many adapters."""

from __future__ import annotations

import argparse
import os

from lora_rlhf.cli.inference_args import add_model_arguments, load_registry

# ServeLimits' defaults (serve/limits.py), repeated so that `lora-rlhf --help` works without the serve extra.
MAX_TOKENS_LIMIT = 4096
REQUEST_TIMEOUT_S = 300.0
MAX_BATCH_SIZE = 8
MAX_QUEUE = 256
BATCH_WINDOW_MS = 10.0

DESCRIPTION = (
    "Serve /v1/models, /v1/completions and /v1/chat/completions (streaming included); the request's `model` "
    "picks the adapter, 'base' the bare base; concurrent requests are generated in batches that mix adapters. "
    "POST /v1/adapters {name, path} and DELETE /v1/adapters/NAME load and unload adapters "
    "at run time, from --allowed-root folders only. Binds to 127.0.0.1 unless --host says otherwise."
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="OpenAI-compatible server with hot-swapped adapters", description=DESCRIPTION
    )
    add_model_arguments(parser)
    http = parser.add_argument_group("server")
    http.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    http.add_argument("--port", type=int, default=8000)
    http.add_argument(
        "--allowed-root",
        action="append",
        default=[],
        metavar="DIR",
        help="folder adapters may be loaded from at run time (repeatable; default: the run's adapters/)",
    )
    http.add_argument("--allow-hub", action="store_true", help="let POST /v1/adapters download Hub ids")
    http.add_argument(
        "--api-key",
        default=os.environ.get("LORA_RLHF_API_KEY"),
        help="require `Authorization: Bearer KEY` (default: $LORA_RLHF_API_KEY, else no key)",
    )
    http.add_argument("--max-tokens", type=int, default=256, help="response budget of chat requests that set none")
    http.add_argument(
        "--max-tokens-limit",
        type=int,
        default=MAX_TOKENS_LIMIT,
        metavar="N",
        help="refuse (400) requests asking for more than N response tokens; the model's context "
        "bounds them too (default %(default)s)",
    )
    http.add_argument(
        "--request-timeout",
        type=float,
        default=REQUEST_TIMEOUT_S,
        metavar="SECONDS",
        help="stop a request's generation SECONDS after it arrived: the response keeps what was "
        "generated, with finish_reason 'length' (503 if it was still waiting for the model); "
        "0 = no limit (default %(default)s)",
    )
    http.add_argument(
        "--max-batch-size",
        type=int,
        default=MAX_BATCH_SIZE,
        metavar="N",
        help="generate up to N responses together in one batch, mixing adapters; 1 = one at a time "
        "(default %(default)s)",
    )
    http.add_argument(
        "--max-queue",
        type=int,
        default=MAX_QUEUE,
        metavar="N",
        help="answer 429 to a request that would make more than N responses wait for a batch (default %(default)s)",
    )
    http.add_argument(
        "--batch-window-ms",
        type=float,
        default=BATCH_WINDOW_MS,
        metavar="MS",
        help="how long an idle server waits for concurrent requests to join a batch (default %(default)s)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lora_rlhf.paths import RunLayout
    from lora_rlhf.serve import create_app, run_server
    from lora_rlhf.serve.access import is_loopback
    from lora_rlhf.serve.limits import ServeLimits

    registry = load_registry(args)
    roots = list(args.allowed_root)
    if not roots and args.run:
        roots = [str(RunLayout(args.run).adapters)]
    limits = ServeLimits(
        max_tokens=args.max_tokens_limit,
        request_timeout=args.request_timeout or None,
        max_batch_size=args.max_batch_size,
        max_queue=args.max_queue,
        batch_window_s=args.batch_window_ms / 1000,
    )
    app = create_app(
        registry,
        allowed_roots=roots,
        allow_hub=args.allow_hub,
        api_key=args.api_key,
        host=args.host,
        default_max_tokens=args.max_tokens,
        limits=limits,
    )
    print(f"serving {', '.join(registry.names)} on http://{args.host}:{args.port}/v1")
    if not is_loopback(args.host) and not args.api_key:
        print("warning: listening beyond this machine without --api-key: adapters cannot be loaded or unloaded")
    run_server(app, host=args.host, port=args.port)
    return 0
