"""Tokens/s and peak memory of one SFT step and one reward-model step (forward + backward + AdamW).

    python scripts/bench_sft_rm.py [--model PATH] [--quantization nf4] [--batch 8] [--seq-len 128] [--k 4]

--model defaults to the embedded demo model (SmolLM2-135M-Instruct, `lora_rlhf.testing.bench.default_model()`).
The steps are the stages' own: `sft_loss` on a right-padded batch of B sequences, and `rm_loss` on B
prompts x K responses scored in one forward pass with the K-way ranking loss (InstructGPT §3.5).
Tokens/s counts non-pad tokens through forward and backward (median step). Peak memory
(`lora_rlhf.testing.bench.PeakMemory`): on CUDA the allocator's peak (model included); on the CPU the process's
peak resident set, sampled every 2 ms; both also as what the steps added to the memory held before the first
one (activations, gradients, Adam state). Timings depend on what else runs: say how many cores were free.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Callable

import torch

from lora_rlhf.data.demonstrations import IGNORE_INDEX, SFTExample
from lora_rlhf.data.rankings import RankingExample
from lora_rlhf.models.base import BaseModelConfig
from lora_rlhf.models.lora import LoraSettings
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.rm.batching import collate_rankings
from lora_rlhf.rm.trainer import rm_loss
from lora_rlhf.sft.loss import collate_sft, sft_loss
from lora_rlhf.testing.bench import PeakMemory, default_model


def sft_batch(vocab: int, batch: int, seq_len: int, prompt_len: int) -> list[SFTExample]:
    ids = torch.randint(10, vocab, (batch, seq_len)).tolist()
    return [SFTExample(row, [IGNORE_INDEX] * prompt_len + row[prompt_len:], False) for row in ids]


def rm_batch(vocab: int, batch: int, k: int, prompt_len: int, response_len: int) -> list[RankingExample]:
    def ids(n: int) -> list[int]:
        return torch.randint(10, vocab, (n,)).tolist()

    return [
        RankingExample(ids(prompt_len), [ids(response_len) for _ in range(k)], torch.randperm(k).tolist())
        for _ in range(batch)
    ]


def time_step(stack: RoleStack, role: str, loss_of: Callable[[], torch.Tensor], optimizer) -> float:
    """Seconds for forward + backward (inside `use(role)`, as gradient checkpointing needs) + AdamW step."""
    if stack.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with stack.use(role):
        loss_of().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if stack.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench(stack: RoleStack, role: str, batch: dict[str, torch.Tensor], loss_of, steps: int) -> dict[str, float]:
    stack.set_trainable(role)
    optimizer = torch.optim.AdamW(stack.role_parameters(role), lr=1e-5)
    stack.model.train()
    with PeakMemory(stack.device) as memory:  # from before the first step, which allocates activations and Adam state
        time_step(stack, role, lambda: loss_of(batch), optimizer)  # warm-up (untimed): allocations, kernel choice
        times = [time_step(stack, role, lambda: loss_of(batch), optimizer) for _ in range(steps)]
    stack.set_trainable()
    tokens = int(batch["attention_mask"].sum())
    best = min(times)
    return {
        "tokens": tokens,
        "step_s": round(statistics.median(times), 4),
        "best_s": round(best, 4),
        "tokens_per_s": round(tokens / statistics.median(times), 1),
        "peak_mib": round(memory.peak / 2**20, 1),
        "added_mib": round((memory.peak - memory.before) / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder or Hub id (default: the embedded demo model)")
    parser.add_argument("--quantization", default="auto", choices=["auto", "nf4", "int8", "none"])
    parser.add_argument("--device", default="auto", help="torch device (auto: cuda if available)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--batch", type=int, default=8, help="SFT sequences / RM prompts per step")
    parser.add_argument("--seq-len", type=int, default=128, help="SFT sequence length (prompt + response)")
    parser.add_argument("--prompt-len", type=int, default=32, help="prompt tokens (masked out of the SFT loss)")
    parser.add_argument("--k", type=int, default=4, help="RM responses per prompt (InstructGPT: 4 to 9)")
    parser.add_argument("--response-len", type=int, default=64, help="RM tokens per response")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    parser.add_argument("--lora-r", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    model = args.model or default_model()
    config = BaseModelConfig(
        model, quantization=args.quantization, device=args.device, gradient_checkpointing=args.gradient_checkpointing
    )
    stack = RoleStack.load(config)
    for role in ("sft", "reward"):
        stack.add_role(role, LoraSettings(r=args.lora_r, alpha=2 * args.lora_r))
    vocab, pad = stack.tokenizer.vocab_size, stack.tokenizer.pad_token_id
    torch.manual_seed(0)
    sft = {
        k: v.to(stack.device)
        for k, v in collate_sft(sft_batch(vocab, args.batch, args.seq_len, args.prompt_len), pad).items()
    }
    rm = {
        k: v.to(stack.device)
        for k, v in collate_rankings(
            rm_batch(vocab, args.batch, args.k, args.prompt_len, args.response_len), pad
        ).items()
    }
    results = {
        "model": model,
        "device": str(stack.device),
        "quantization": config.resolved_quantization(),
        "threads": torch.get_num_threads(),
        "gradient_checkpointing": args.gradient_checkpointing,
        "sft": {
            "shape": f"{args.batch} x {args.seq_len}",
            **bench(stack, "sft", sft, lambda b: sft_loss(stack, b).loss, args.steps),
        },
        "rm": {
            "shape": f"{args.batch} prompts x K={args.k} x {args.prompt_len}+{args.response_len}",
            **bench(stack, "reward", rm, lambda b: rm_loss(stack, b).loss, args.steps),
        },
    }
    if stack.device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(stack.device)
    for stage in ("sft", "rm"):
        r = results[stage]
        print(
            f"{stage:>3}: {r['shape']:<32} {r['tokens_per_s']:>9.1f} tokens/s  step {r['step_s']:.3f} s  "
            f"peak {r['peak_mib']:.1f} MiB (+{r['added_mib']:.1f} by the step)"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
