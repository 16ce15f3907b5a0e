"""Measure the embedded demo's model: the base's gold score per task family, and CPU speed in NF4.

    python scripts/bench_demo_model.py [--tasks 42] [--max-new-tokens 48] [--seed 0] [--device cpu]

Prints (1) the mean gold score of greedy base responses per family (is the task neither trivial nor
hopeless for SmolLM2-135M-Instruct?), (2) seconds to generate 8 x 48 new tokens, (3) seconds for one LoRA
training step (forward + backward + AdamW) on 8 x 128 tokens. Timings depend on what else runs on the
machine: say how many cores were free when you report them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from collections import defaultdict

import torch

from lora_rlhf.data.chat import render_prompt
from lora_rlhf.demo.judge import gold_scores
from lora_rlhf.demo.tasks import sample_tasks
from lora_rlhf.models import engine, forward
from lora_rlhf.models.base import BaseModelConfig
from lora_rlhf.models.demo_model import demo_model_dir
from lora_rlhf.models.lora import LoraSettings
from lora_rlhf.models.roles import RoleStack


def allow_cpu_repack(model: torch.nn.Module) -> int:
    """Undo the toolkit's NF4 guard (models/base.py: keep_nf4_differentiable), for a timing comparison only.

    With the repack on, bitsandbytes switches eval-mode no-grad forwards to its `gemv_4bit` CPU kernel,
    which has no autograd kernel: later training steps get wrong gradients (measured here: layer-0 q_proj
    lora_A grad norm 1.2e-2 before a generate() call, 9.9e-7 after it).
    """
    touched = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = True
            touched += 1
    return touched


def greedy(stack: RoleStack, prompts: list[str], max_new_tokens: int, batch: int = 8) -> list[str]:
    tokenizer, out = stack.tokenizer, []
    for start in range(0, len(prompts), batch):
        texts = [render_prompt(tokenizer, p) for p in prompts[start : start + batch]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(stack.device)
        ids = engine.sample(
            stack, "base", enc.input_ids, enc.attention_mask, max_new_tokens=max_new_tokens, temperature=0.0
        )
        ids = ids.sequences
        out += [t.strip() for t in tokenizer.batch_decode(ids[:, enc.input_ids.shape[1] :], skip_special_tokens=True)]
    return out


def time_generation(stack: RoleStack, prompts: list[str], new_tokens: int) -> float:
    tokenizer = stack.tokenizer
    enc = tokenizer(
        [render_prompt(tokenizer, p) for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False
    ).to(stack.device)
    start = time.perf_counter()
    # No stop id: every row runs the full budget, so the figure is for exactly len(prompts) x new_tokens tokens.
    engine.sample(
        stack, "base", enc.input_ids, enc.attention_mask, max_new_tokens=new_tokens, temperature=0.0, stop_ids=[]
    )
    return time.perf_counter() - start


def time_train_step(stack: RoleStack, batch: int, length: int) -> float:
    if not stack.has_role("sft"):
        stack.add_role("sft", LoraSettings())
    stack.set_trainable("sft")
    optimizer = torch.optim.AdamW(stack.role_parameters("sft"), lr=1e-4)
    ids = torch.randint(10, stack.tokenizer.vocab_size, (batch, length), device=stack.device)
    mask = torch.ones_like(ids)
    start = time.perf_counter()
    with stack.use("sft"):
        loss = -forward.logprobs(stack, "sft", ids, mask).logprobs.mean()
        loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=42, help="tasks to answer (spread over the families)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="response budget of the demo")
    parser.add_argument("--seed", type=int, default=0, help="task seed")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--examples", type=int, default=1, help="responses to show per family")
    parser.add_argument(
        "--cpu-repack",
        action="store_true",
        help="let bitsandbytes repack NF4 weights for its faster CPU inference kernel "
        "(breaks gradients of later training steps; for timing comparison only)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    start = time.perf_counter()
    stack = RoleStack.load(BaseModelConfig(str(demo_model_dir()), quantization="nf4", device=args.device))
    if args.cpu_repack:
        allow_cpu_repack(stack.base_model)
    print(
        f"load (incl. conversion on first use): {time.perf_counter() - start:.1f} s; cpu repack {args.cpu_repack}; "
        f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}"
    )

    tasks = sample_tasks(args.tasks, args.seed, split="eval")
    start = time.perf_counter()
    responses = greedy(stack, [t.prompt for t in tasks], args.max_new_tokens)
    print(f"greedy responses to {len(tasks)} tasks: {time.perf_counter() - start:.1f} s")
    scores = gold_scores([t.prompt for t in tasks], responses)
    by_family: dict[str, list[float]] = defaultdict(list)
    shown: dict[str, int] = defaultdict(int)
    for task, response, score in zip(tasks, responses, scores):
        by_family[task.family].append(score)
        if shown[task.family] < args.examples:
            shown[task.family] += 1
            print(f"  [{task.family}] {task.prompt}\n    -> {json.dumps(response)}  gold {score:.2f}")
    print("base gold score per family (greedy, mean, exact-answer share):")
    for family, values in by_family.items():
        exact = sum(v == 1.0 for v in values) / len(values)
        print(f"  {family:<11} {statistics.mean(values):.3f}  exact {exact:.2f}  (n={len(values)})")
    print(f"  {'all':<11} {statistics.mean(scores):.3f}")

    gen = [time_generation(stack, [t.prompt for t in tasks[:8]], 48) for _ in range(2)]
    print(f"generate 8 x 48 new tokens (NF4, {args.device}): {min(gen):.2f} s (best of {len(gen)}: {gen})")
    steps = [time_train_step(stack, 8, 128) for _ in range(3)]
    print(
        f"one LoRA step on 8 x 128 tokens (NF4, r=16 all-linear, AdamW): {min(steps[1:]):.2f} s "
        f"(first {steps[0]:.2f} s, all {[round(s, 2) for s in steps]})"
    )


if __name__ == "__main__":
    main()
