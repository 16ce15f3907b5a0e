"""Encoding a prompt once for its K responses: RM training steps and K-sample generation, shared vs full rows.

    python scripts/bench_prefix.py [--model PATH] [--quantization none|nf4] [--k 8] [--prompts 4] [--repeats 2]

--model defaults to the embedded demo model (SmolLM2-135M-Instruct); prompts are the demo's instruction tasks
and the K responses are sampled from the model itself, so their lengths are the demo's. In one process it times

  * one RM training step (forward + backward of the ranking loss) on `--prompts` rankings of K responses, with
    each prompt + response row encoded in full (`collate_rankings`) and with each prompt encoded once and its
    responses run on its KV cache (`collate_shared_prompts`), checking both give the same loss;
  * `engine.sample` (models/engine.py) of K samples for each of 8 prompts (8K rows), with each distinct prompt
    prefilled once (the default) and with every row prefilled, checking both give the same tokens from the same seed.

Medians of `--repeats` timed repetitions after one warm-up; timings depend on what else runs.
"""

from __future__ import annotations

import argparse

import torch

from lora_rlhf.data.chat import render_prompt
from lora_rlhf.data.rankings import RankingExample
from lora_rlhf.demo.tasks import sample_tasks
from lora_rlhf.models import engine
from lora_rlhf.models.base import BaseModelConfig
from lora_rlhf.models.lora import LoraSettings
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.rm.batching import collate_rankings, collate_shared_prompts
from lora_rlhf.rm.trainer import rm_loss
from lora_rlhf.testing.bench import default_model, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--quantization", default="none", choices=["none", "nf4"])
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    stack = RoleStack.load(
        BaseModelConfig(args.model or str(default_model()), quantization=args.quantization, compute_dtype="float32")
    )
    stack.add_role("reward", LoraSettings(r=16, alpha=32, dropout=0.0))
    tok = stack.tokenizer
    prompts = [render_prompt(tok, t.prompt) for t in sample_tasks(8, seed=0, families=["uppercase", "dashes"])]
    enc = tok([p for p in prompts for _ in range(args.k)], return_tensors="pt", padding=True, add_special_tokens=False)

    def sample(shared: bool):
        def run():
            torch.manual_seed(0)
            out = engine.sample(
                stack, "reward", enc.input_ids, enc.attention_mask, max_new_tokens=24, temperature=1.0,
                share_prompts=shared,
            )  # fmt: skip
            return out.sequences

        return run

    gen_full, rows_full = timed(sample(False), args.repeats)
    gen_shared, rows_shared = timed(sample(True), args.repeats)
    width = enc.input_ids.shape[1]
    examples = []
    for p in range(args.prompts):
        responses = [
            [t for t in row[width:].tolist() if t != tok.pad_token_id] or [tok.eos_token_id]
            for row in rows_shared[p * args.k : (p + 1) * args.k]
        ]
        prompt_ids = [t for t, m in zip(enc.input_ids[p * args.k].tolist(), enc.attention_mask[p * args.k]) if m]
        examples.append(RankingExample(prompt_ids, responses, list(range(len(responses)))))
    torch.nn.init.normal_(stack.head("reward").linear.weight, std=0.02)
    stack.set_trainable("reward")

    def step(collate):
        def run():
            with stack.use("reward"):
                out = rm_loss(stack, collate(examples, tok.pad_token_id))
                out.loss.backward()
            for p in stack.role_parameters("reward"):
                p.grad = None
            return out.loss.item()

        return run

    rm_full, loss_full = timed(step(collate_rankings), args.repeats)
    rm_shared, loss_shared = timed(step(collate_shared_prompts), args.repeats)
    tokens_full = sum(len(e.prompt_ids) + len(r) for e in examples for r in e.response_ids)
    tokens_shared = sum(len(e.prompt_ids) + sum(len(r) for r in e.response_ids) for e in examples)
    print(f"model {args.model or 'demo'} ({args.quantization}), K = {args.k}, torch threads {torch.get_num_threads()}")
    print("| work | full rows (s) | prompt once (s) | ratio | check |")
    print("|---|---:|---:|---:|---|")
    print(
        f"| RM step, {args.prompts} rankings ({tokens_full} vs {tokens_shared} tokens) | {rm_full:.2f} | "
        f"{rm_shared:.2f} | {rm_shared / rm_full:.2f}x | loss {loss_full:.6f} vs {loss_shared:.6f} |"
    )
    same = rows_full.shape == rows_shared.shape and torch.equal(rows_full, rows_shared)
    print(
        f"| generate {enc.input_ids.shape[0]} rows (8 prompts x {args.k}), 24 new tokens | {gen_full:.2f} | "
        f"{gen_shared:.2f} | {gen_shared / gen_full:.2f}x | same tokens: {same} |"
    )


if __name__ == "__main__":
    main()
