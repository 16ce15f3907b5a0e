"""Check the memory plan's arithmetic against allocator-level measurements (issue 14).

For each model and size it runs the operations a stage's peak comes from and compares the measured
peak with `lora_rlhf.plan.estimate`'s prediction:

    train     log-probs + backward of one LoRA role (the SFT / PPO policy step), gradient checkpointing off
    train-gc  the same with gradient checkpointing on
    score     log-probs without grad (PPO's scoring pass)
    generate  sampling new tokens (PPO's rollout, eval)

Measured = weights, adapters, gradients (counted tensor by tensor) + the block's allocated-bytes peak
(torch.profiler's memory timeline on the CPU, torch.cuda.max_memory_allocated on CUDA). Prints a
Markdown table; run it with nothing else on the machine.

    python scripts/validate_plan.py [--device cpu] [--models demo,llama,gpt_neox]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import torch

from lora_rlhf import BaseModelConfig, LoraSettings, RoleStack
from lora_rlhf.models.names import resolve_model_name
from lora_rlhf.plan import estimate
from lora_rlhf.plan.measure import allocated_peak, resident_bytes
from lora_rlhf.plan.shapes import model_shape
from lora_rlhf.testing import make_tiny_model

R = 16
SIZES = {"demo": [(2, 64), (4, 128), (8, 192)], "tiny": [(4, 64), (8, 128), (16, 256)]}
NEW_TOKENS = 8  # generated per row: the KV cache covers prompt + new tokens; fewer steps keep profiling short


def _folder(name: str, root: Path) -> str:
    if name == "demo":
        return resolve_model_name("demo:smollm2")
    return str(make_tiny_model(root / name, name, hidden=256, layers=4, vocab_size=2048))


def _predict(shape, op: str, rows: int, tokens: int, quant: str, dropout: bool) -> int:
    static = estimate.base_weight_bytes(shape, quant, "float32") + estimate.adapter_bytes(shape, R, 1, 0)
    if op.startswith("train"):
        static += shape.lora_params(R) * 4  # gradients (no optimizer step here)
        act = estimate.activation_bytes(
            shape, rows, tokens, "float32", grad=True, checkpointing=op == "train-gc", lora_dropout=dropout
        )
        return static + act + estimate.logit_bytes(shape, rows, min(tokens, 256), grad=True)
    if op == "score":
        act = estimate.activation_bytes(
            shape, rows, tokens, "float32", grad=False, checkpointing=False, lora_dropout=False
        )
        return static + act + estimate.logit_bytes(shape, rows, min(tokens, 256), grad=False)
    prompt = tokens - NEW_TOKENS
    act = estimate.activation_bytes(shape, rows, prompt, "float32", grad=False, checkpointing=False, lora_dropout=False)
    return (
        static
        + act
        + estimate.kv_cache_bytes(shape, rows, tokens, "float32")
        + estimate.logit_bytes(shape, rows, 1, grad=False)
    )


def _measure(stack: RoleStack, op: str, rows: int, tokens: int) -> int:
    vocab = stack.base_model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(3, min(1000, vocab), (rows, tokens))
    mask = torch.ones_like(ids)
    stack.set_trainable("sft")
    stack.model.zero_grad(set_to_none=True)
    if op.startswith("train"):
        causal_lm = stack.model.get_base_model()
        if op == "train-gc":
            causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        with stack.training(), allocated_peak(stack.device) as peak:
            stack.logprobs("sft", ids, mask).logprobs.mean().backward()
        if op == "train-gc":
            causal_lm.gradient_checkpointing_disable()
    elif op == "score":
        with stack.evaluating(), torch.no_grad(), allocated_peak(stack.device) as peak:
            stack.logprobs("sft", ids, mask, with_entropy=True)
    else:
        prompt = tokens - NEW_TOKENS
        with allocated_peak(stack.device) as peak:
            stack.generate(
                "sft",
                ids[:, :prompt],
                mask[:, :prompt],
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=True,
                top_k=0,
            )
    measured = resident_bytes(stack.base_model) + peak.bytes
    stack.model.zero_grad(set_to_none=True)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="demo,llama,gpt_neox")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print("| model | quantization | op | rows x tokens | predicted MB | measured MB | predicted / measured |")
    print("|---|---|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            folder = _folder(name, Path(tmp))
            quant = "nf4" if name == "demo" else "none"
            stack = RoleStack.load(
                BaseModelConfig(folder, quantization=quant, device=args.device, gradient_checkpointing=False)
            )
            stack.add_role("sft", LoraSettings(r=R, dropout=0.05))
            shape = model_shape(folder)
            for op in ("train", "train-gc", "score", "generate"):
                for rows, tokens in SIZES["demo" if name == "demo" else "tiny"]:
                    predicted = _predict(shape, op, rows, tokens, quant, dropout=True)
                    measured = _measure(stack, op, rows, tokens)
                    print(
                        f"| {name} | {quant} | {op} | {rows} x {tokens} "
                        f"| {predicted / 1e6:,.0f} | {measured / 1e6:,.0f} "
                        f"| {predicted / measured:.2f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
