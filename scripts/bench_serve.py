"""Throughput of `lora-rlhf serve`: continuously batched across adapters versus one request at a time (issue 15).

    python scripts/bench_serve.py [--base demo:smollm2] [--clients 1 4 16] [--requests-per-client 4]
                                  [--max-tokens 32] [--batch-size 16] [--device cpu] [--threads N]

Loads the base once, attaches 3 random adapters (LoRA B drawn at random, so each answers differently), and
for each mode (--max-batch-size 1, then --batch-size) and each number of concurrent clients, every client
sends its requests one after another through the official `openai` client, spread over the 3 adapters.
Prints a Markdown table: generated tokens per second (all clients together, usage.completion_tokens over the
wall time) and p50/p95 request latency. Timings depend on what else runs on the machine: run it on a quiet
one and say which (CPU model, free cores, --threads).
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import openai
import torch

from lora_rlhf.inference import AdapterRegistry, base_config
from lora_rlhf.serve import BackgroundServer, create_app
from lora_rlhf.serve.limits import ServeLimits
from lora_rlhf.testing.adapters import make_adapters

ADAPTERS = ("alpha", "beta", "gamma")
PROMPTS = (
    "Sort the numbers 7 3 9 1 in ascending order.",
    "Reverse the words: the quick brown fox.",
    "Write one sentence about the sea.",
    "What is 12 plus 30?",
)


@dataclass
class Result:
    mode: str
    clients: int
    requests: int
    tokens: int
    wall_s: float
    latencies: list[float]

    def row(self) -> str:
        p50, p95 = percentile(self.latencies, 50), percentile(self.latencies, 95)
        rate = self.tokens / self.wall_s
        return (
            f"| {self.mode} | {self.clients} | {self.requests} | {self.tokens} | {rate:.1f} | {p50:.2f} | {p95:.2f} |"
        )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: with few requests it is one of the measured latencies)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def run_clients(url: str, clients: int, per_client: int, max_tokens: int) -> tuple[int, float, list[float]]:
    """(completion tokens, wall seconds, per-request latencies) of `clients` threads, each asking in turn."""
    latencies: list[float] = []
    tokens = [0] * clients
    errors: list[BaseException] = []

    def client(index: int) -> None:
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=600)
        for i in range(per_client):
            started = time.monotonic()
            try:
                out = api.chat.completions.create(
                    model=ADAPTERS[(index + i) % len(ADAPTERS)],
                    messages=[{"role": "user", "content": PROMPTS[(index + 2 * i) % len(PROMPTS)]}],
                    max_tokens=max_tokens,
                    temperature=0,
                )
            except Exception as exc:  # noqa: BLE001 - reported after the run
                errors.append(exc)
                return
            latencies.append(time.monotonic() - started)
            tokens[index] += out.usage.completion_tokens

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, the first: {errors[0]!r}")
    return sum(tokens), wall, latencies


def bench(registry: AdapterRegistry, args: argparse.Namespace) -> list[Result]:
    results = []
    modes = [("one at a time", 1), (f"batched (≤{args.batch_size})", args.batch_size)]
    for mode, batch_size in modes:
        limits = ServeLimits(max_batch_size=batch_size, max_queue=max(256, max(args.clients)), request_timeout=None)
        with BackgroundServer(create_app(registry, limits=limits)) as server:
            run_clients(server.url, len(ADAPTERS), 1, min(4, args.max_tokens))  # warm-up: every adapter once
            for clients in args.clients:
                tokens, wall, latencies = run_clients(server.url, clients, args.requests_per_client, args.max_tokens)
                results.append(Result(mode, clients, len(latencies), tokens, wall, latencies))
                print(results[-1].row(), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--base", default="demo:smollm2", help="base model (a folder, Hub id, demo:smollm2, tiny:llama)"
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients, each a row")
    parser.add_argument("--requests-per-client", type=int, default=4, help="requests each client sends in turn")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request (greedy)")
    parser.add_argument("--batch-size", type=int, default=16, help="--max-batch-size of the batched mode")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quantization", default="none", choices=["none", "nf4", "int8"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = base_config(args.base, quantization=args.quantization, device=args.device)
    registry = AdapterRegistry.load(config)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        for name, folder in make_adapters(config.name_or_path, Path(tmp), ADAPTERS).items():
            registry.attach(name, folder)
    print(
        f"base {args.base} on {args.device} ({args.quantization}), {torch.get_num_threads()} torch threads, "
        f"adapters {', '.join(ADAPTERS)}, max_tokens {args.max_tokens}, greedy, "
        f"{args.requests_per_client} requests per client\n"
    )
    print("| mode | clients | requests | tokens | tokens/s | p50 latency (s) | p95 latency (s) |")
    print("|---|---|---|---|---|---|---|")
    bench(registry, args)


if __name__ == "__main__":
    main()
