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
    python scripts/validate_plan.py --device cuda --models 8b --model-config scripts/model_configs/llama-3.1-8b.json

`8b` is the `--model-config` architecture with random NF4 weights (lora_rlhf/testing/random_quantized.py,
bf16 compute, as the 8B recipes load it) at the 8B recipe's sizes: sft's 4 x 1024 with gradient checkpointing,
PPO's scoring micro-batch 4 x 768 and the rollout's 64 x 768 (checkpointing off would keep ~70 GiB). On CUDA the
table adds torch.cuda.max_memory_reserved (the caching allocator's high-water mark, which the plan's runtime
allowance is meant to cover).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import torch

from lora_rlhf import BaseModelConfig, LoraSettings, RoleStack
from lora_rlhf.models import engine, forward
from lora_rlhf.models.logprobs import LOGPROB_CHUNK
from lora_rlhf.models.names import resolve_model_name
from lora_rlhf.plan import estimate
from lora_rlhf.plan.measure import allocated_peak, resident_bytes
from lora_rlhf.plan.shapes import model_shape
from lora_rlhf.testing import make_tiny_model

R = 16
SIZES = {"demo": [(2, 64), (4, 128), (8, 192)], "tiny": [(4, 64), (8, 128), (16, 256)]}
OPS = {"8b": {"train-gc": [(4, 1024)], "score": [(4, 768)], "generate": [(64, 768)]}}
NEW_TOKENS = 8  # generated per row: the KV cache covers prompt + new tokens; fewer steps keep profiling short


def _folder(name: str, root: Path) -> str:
    if name == "demo":
        return resolve_model_name("demo:smollm2")
    return str(make_tiny_model(root / name, name, hidden=256, layers=4, vocab_size=2048))


def _predict(shape, op: str, rows: int, tokens: int, quant: str, dropout: bool, dtype: str = "float32") -> int:
    held = estimate.held_dtype(quant, dtype)  # a k-bit base computes in fp32 but for its matmuls (estimate.py)
    static = estimate.base_weight_bytes(shape, quant, dtype) + estimate.adapter_bytes(shape, R, 1, 0)
    if op.startswith("train"):
        static += shape.lora_params(R) * 4  # gradients (no optimizer step here)
        # measured without autocast, on CUDA too: PEFT's LoRA dropout copies are its fp32 cast of the input
        act = estimate.activation_bytes(
            shape,
            rows,
            tokens,
            held,
            grad=True,
            checkpointing=op == "train-gc",
            lora_dropout=dropout,
            dropout_dtype=estimate.lora_input_dtype("cpu", held),
        )
        return static + act + estimate.logit_bytes(shape, rows, min(tokens, LOGPROB_CHUNK), grad=True)
    if op == "score":
        act = estimate.activation_bytes(shape, rows, tokens, held, grad=False, checkpointing=False, lora_dropout=False)
        return static + act + estimate.logit_bytes(shape, rows, min(tokens, LOGPROB_CHUNK), grad=False)
    prompt = tokens - NEW_TOKENS
    act = estimate.activation_bytes(shape, rows, prompt, held, grad=False, checkpointing=False, lora_dropout=False)
    return (
        static
        + act
        + estimate.kv_cache_bytes(shape, rows, tokens, held)
        + estimate.logit_bytes(shape, rows, 1, grad=False)
    )


def _measure(stack: RoleStack, op: str, rows: int, tokens: int) -> tuple[int, int]:
    """(measured bytes, the CUDA caching allocator's reserved high-water mark or 0 on the CPU)."""
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
            forward.logprobs(stack, "sft", ids, mask).logprobs.mean().backward()
        if op == "train-gc":
            causal_lm.gradient_checkpointing_disable()
    elif op == "score":
        with stack.evaluating(), torch.no_grad(), allocated_peak(stack.device) as peak:
            forward.logprobs(stack, "sft", ids, mask, with_entropy=True)
    else:
        prompt = tokens - NEW_TOKENS
        with allocated_peak(stack.device) as peak:
            # No stop id: every row decodes the full budget, the most the KV cache holds.
            engine.sample(
                stack, "sft", ids[:, :prompt], mask[:, :prompt], max_new_tokens=NEW_TOKENS, temperature=1.0, stop_ids=[]
            )
    measured = resident_bytes(stack.base_model) + peak.bytes
    reserved = torch.cuda.max_memory_reserved(stack.device) if stack.device.type == "cuda" else 0
    stack.model.zero_grad(set_to_none=True)
    return measured, reserved


def _load(name: str, folder: str | None, device: str, model_config: Path | None) -> tuple[RoleStack, object, str]:
    """The stack of `name` with an `sft` role, its ModelShape and its quantization."""
    if name == "8b":
        from transformers import AutoConfig

        from lora_rlhf.models.base import prepare_for_training
        from lora_rlhf.models.tiny import tiny_tokenizer
        from lora_rlhf.testing.random_quantized import random_nf4_model

        if model_config is None:
            raise SystemExit("validate_plan: --models 8b needs --model-config (a config.json)")
        model = random_nf4_model(AutoConfig.from_pretrained(str(model_config)), compute_dtype=torch.bfloat16)
        model = prepare_for_training(model.to(device), quantized=True, gradient_checkpointing=False)
        stack = RoleStack(model, tiny_tokenizer(384), base_name=model_config.stem)
        shape = model_shape(str(model_config))
        quant = "nf4"
    else:
        quant = "nf4" if name == "demo" else "none"
        stack = RoleStack.load(BaseModelConfig(folder, quantization=quant, device=device, gradient_checkpointing=False))
        shape = model_shape(folder)
    stack.add_role("sft", LoraSettings(r=R, dropout=0.05))
    return stack, shape, quant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="demo,llama,gpt_neox", help="demo, llama, gpt_neox (tiny), 8b")
    parser.add_argument("--model-config", type=Path, help="the config.json of --models 8b")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cuda = args.device.startswith("cuda")
    extra = " reserved MB |" if cuda else ""
    print(f"| model | quantization | op | rows x tokens | predicted MB | measured MB | predicted / measured |{extra}")
    print("|---|---|---|---|---:|---:|---:|" + ("---:|" if cuda else ""))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            folder = None if name == "8b" else _folder(name, Path(tmp))
            stack, shape, quant = _load(name, folder, args.device, args.model_config)
            dtype = "bfloat16" if name == "8b" else "float32"
            default = {
                op: SIZES["demo" if name == "demo" else "tiny"] for op in ("train", "train-gc", "score", "generate")
            }
            for op, sizes in OPS.get(name, default).items():
                for rows, tokens in sizes:
                    predicted = _predict(shape, op, rows, tokens, quant, dropout=True, dtype=dtype)
                    measured, reserved = _measure(stack, op, rows, tokens)
                    cell = f" {reserved / 1e6:,.0f} |" if cuda else ""
                    print(
                        f"| {name} | {quant} | {op} | {rows} x {tokens} "
                        f"| {predicted / 1e6:,.0f} | {measured / 1e6:,.0f} "
                        f"| {predicted / measured:.2f} |{cell}",
                        flush=True,
                    )
            del stack


if __name__ == "__main__":
    main()
