"""Time split and peak memory of PPO iterations on one base: generate, score, train (policy + value).

    python scripts/bench_ppo.py [--model PATH] [--quantization nf4] [--rollout 16] [--mini 8] [--micro 8]
                                [--max-new-tokens 32] [--iterations 3] [--ptx] [--compare-logprobs]
                                [--gradient-checkpointing] [--compare-before]
                                [--dequantized-decoding auto|true|false]
                                [--samples-per-prompt 1] [--compare-advantage rloo|grpo]

--model defaults to the embedded demo model (SmolLM2-135M-Instruct). Prompts are the demo's instruction
tasks. Each iteration is the stage's own code: `make_rollout` (sample from policy, recording its log-probs;
log-probs of the sft reference, values, reward-model scores: all on the one base), `add_advantages` (eq. 2 rewards,
GAE) and `train_on_rollout` (clipped policy and value updates, optionally the PPO-ptx LM term). The first
iteration warms up and is not counted. With --compare-logprobs every iteration makes its rollout twice from
the same random state, once taking the policy's log-probs from the generation pass (the default) and once
recomputing them with a forward, and reports both iterations' times (train is shared). With --compare-advantage
every iteration also runs critic-free (ppo.advantage rloo or grpo, issue 27) from the same random state, in
alternating order: its rollout without the value pass, its update without the value role, and the time ratio
critic-free / gae within the run; the bytes the value role holds (adapter, head, gradients, AdamW state) are
what critic-free PPO does not allocate. The train time is also split by the PPO phase hooks (lora_rlhf.ppo.hooks)
into time_advantages, time_policy_backward, time_value_backward and time_optimizer_step. Peak memory:
`lora_rlhf.testing.bench.PeakMemory` (CUDA allocator peak, or the process's resident set on the CPU). Timings
depend on what else runs: say how many cores were free.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import statistics
import time

import torch

from lora_rlhf.data.batching import pad_left
from lora_rlhf.data.demonstrations import Demonstration, encode_demonstration
from lora_rlhf.demo.labeler import Labeler
from lora_rlhf.demo.tasks import sample_tasks
from lora_rlhf.models import forward
from lora_rlhf.models.base import BaseModelConfig
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.models.sequences import stop_mask
from lora_rlhf.ppo.config import PPOConfig, PtxConfig, SamplingConfig
from lora_rlhf.ppo.data import PtxStream
from lora_rlhf.ppo.optimize import add_advantages, build_optimizers, train_on_rollout
from lora_rlhf.ppo.rewards import RunningMoments
from lora_rlhf.ppo.rollout import make_rollout
from lora_rlhf.ppo.trainer import setup_roles
from lora_rlhf.testing.bench import PeakMemory, PhaseTimes, default_model, demo_prompts
from lora_rlhf.testing.reference import reference_generate, sampling_kwargs
from lora_rlhf.train.loop import make_accelerator


def _ptx_stream(stack: RoleStack, batch_size: int) -> PtxStream:
    """PPO-ptx batches of the labeler's demonstrations for 64 demo tasks, built in memory."""
    labeler = Labeler(seed=0)
    examples = [
        encode_demonstration(Demonstration(t.prompt, labeler.demonstrate(t)), stack.tokenizer, 160)
        for t in sample_tasks(64, seed=7)
    ]
    return PtxStream(examples, stack.tokenizer.pad_token_id, batch_size, seed=0)


def _before(stack, batch, config, rollout, optimizers, ptx, step) -> dict[str, float]:
    """One iteration the way PPO ran before issue 15, timed: `model.generate` (every row decoded until the
    batch's last one stops), the policy's log-probs recomputed, four scoring passes over micro-batches at the
    rollout's full width, and training micro-batches at that width. It trains on `rollout` and then restores
    every trainable weight and optimizer state, so the iteration that follows starts from the same place."""
    timing = {}
    start = time.perf_counter()
    ids, mask = pad_left([p.ids for p in batch], stack.tokenizer.pad_token_id)
    stops = stack.eos_ids()
    out = reference_generate(
        stack, "policy", ids, mask, max_new_tokens=config.sampling.max_new_tokens, eos_token_id=sorted(stops),
        **sampling_kwargs(config.sampling.temperature),
    )  # fmt: skip
    responses = out[:, ids.shape[1] :]
    full = torch.cat([mask, stop_mask(responses, stops)], dim=1)
    timing["before_time_generate"] = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        for begin in range(0, len(out), config.micro_batch_size):
            rows, rows_mask, p = (
                out[begin : begin + config.micro_batch_size],
                full[begin : begin + config.micro_batch_size],
                ids.shape[1],
            )
            forward.response_logprobs(stack, "policy", rows, rows_mask, p, with_entropy=True)
            forward.response_logprobs(stack, "reference", rows, rows_mask, p)
            forward.response_values(stack, "value", rows, rows_mask, p)
            forward.response_rewards(stack, "reward", rows, rows_mask, p)
    timing["before_time_score"] = time.perf_counter() - start
    saved = {role: [t.detach().clone() for t in stack.role_parameters(role)] for role in ("policy", "value")}
    states = {
        name: copy.deepcopy(opt.state_dict())
        for name, opt in (("policy", optimizers.policy), ("value", optimizers.value))
    }
    start = time.perf_counter()
    train_on_rollout(stack, rollout, optimizers, config, ptx, step, trim_micro_batches=False)
    timing["before_time_train"] = time.perf_counter() - start
    with torch.no_grad():
        for role, tensors in saved.items():
            for param, value in zip(stack.role_parameters(role), tensors):
                param.copy_(value)
    optimizers.policy.load_state_dict(states["policy"])
    optimizers.value.load_state_dict(states["value"])
    return timing


def _config(args: argparse.Namespace, advantage: str) -> PPOConfig:
    return PPOConfig(
        rollout_batch_size=args.rollout,
        samples_per_prompt=args.samples_per_prompt,
        advantage=advantage,
        mini_batch_size=args.mini,
        micro_batch_size=args.micro,
        sampling=SamplingConfig(max_new_tokens=args.max_new_tokens),
        ptx=PtxConfig(coef=1.0 if args.ptx else 0.0),
    )


def _iteration(stack, batch, config, optimizers, ptx, it, args, state, phases: PhaseTimes) -> dict[str, float]:
    """One timed iteration of `config` (gae or critic-free) from the random `state`: rollout, advantages, train."""
    rollout, timing = make_rollout(
        stack, batch, config.sampling, config.micro_batch_size, with_value=not config.critic_free
    )
    if args.compare_logprobs:
        torch.set_rng_state(state)
        recompute = dataclasses.replace(config.sampling, logprobs_from_generation=False)
        again, slow = make_rollout(stack, batch, recompute, config.micro_batch_size, with_value=not config.critic_free)
        timing.update({f"recompute_{k}": v for k, v in slow.items()})
        timing["max_logprob_gap"] = float(((rollout.logprobs - again.logprobs) * rollout.response_mask).abs().max())
    kl_coef = config.rewards.kl_coef
    moments = RunningMoments()
    add_advantages(
        rollout, kl_coef, config.rewards, moments, config.samples_per_prompt, config.advantage, hooks=[phases]
    )
    if args.compare_before and not config.critic_free:
        torch.set_rng_state(state)
        timing.update(_before(stack, batch, config, rollout, optimizers, ptx, it))
    start = time.perf_counter()
    train_on_rollout(stack, rollout, optimizers, config, ptx, it, kl_coef, hooks=[phases])
    timing["time_train"] = time.perf_counter() - start
    split = {k: v for k, v in phases.take().items() if k not in ("generate", "score")}  # make_rollout times those
    timing.update({f"time_{k}": v for k, v in split.items()})
    timing["response_tokens"] = float(rollout.response_mask.sum())
    return timing


def _role_bytes(stack: RoleStack, role: str, optimizer: torch.optim.Optimizer) -> int:
    """What `role` holds: its parameters (adapter and head), their gradients and its optimizer's state."""
    params = stack.role_parameters(role)
    tensors = params + [p.grad for p in params if p.grad is not None]
    tensors += [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder or Hub id (default: the demo model)")
    parser.add_argument("--quantization", default="nf4", choices=["nf4", "int8", "none"])
    parser.add_argument("--rollout", type=int, default=16, help="prompts per rollout")
    parser.add_argument("--mini", type=int, default=8, help="sequences per optimizer step")
    parser.add_argument("--micro", type=int, default=8, help="sequences per forward/backward")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations (after one warm-up)")
    parser.add_argument("--ptx", action="store_true", help="add the PPO-ptx LM term on demonstrations")
    parser.add_argument(
        "--compare-logprobs",
        action="store_true",
        help="time each rollout with generation log-probs and with a recomputing forward, in the same run",
    )
    parser.add_argument(
        "--compare-before",
        action="store_true",
        help="also time each iteration as PPO ran before issue 15: generate decoding every row until the last "
        "stops, four scoring passes at the rollout's full width, training micro-batches at that width",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--dequantized-decoding",
        choices=["auto", "true", "false"],
        default="auto",
        help="decode from a 4-bit base dequantized once per rollout (model.dequantized_decoding; auto: on the CPU)",
    )
    parser.add_argument(
        "--samples-per-prompt", type=int, default=1, help="responses per prompt (ppo.samples_per_prompt)"
    )
    parser.add_argument(
        "--compare-advantage",
        choices=["rloo", "grpo"],
        default=None,
        help="also time each iteration critic-free (no value pass or update), in the same run; needs "
        "--samples-per-prompt >= 2",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations in the training passes (model.gradient_checkpointing): less memory, more time",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    stack = RoleStack.load(
        BaseModelConfig(
            name_or_path=args.model or default_model(),
            quantization=args.quantization,
            device=args.device,
            gradient_checkpointing=args.gradient_checkpointing,
            dequantized_decoding={"true": True, "false": False}.get(args.dequantized_decoding, "auto"),
        )
    )
    stack.add_role("sft")
    stack.add_role("reward")
    config = _config(args, "gae")
    setup_roles(stack, config)
    stack.set_trainable("policy", "value")
    stack.model.train()  # as train_ppo: train mode, every dropout at p = 0
    accelerator = make_accelerator("auto", stack.device)
    optimizers = build_optimizers(stack, config.optim, config.steps, accelerator)
    free = _config(args, args.compare_advantage) if args.compare_advantage else None
    free_optimizers = build_optimizers(stack, config.optim, config.steps, accelerator, critic=False) if free else None
    ptx = _ptx_stream(stack, config.ptx.batch_size) if args.ptx else None
    prompts = demo_prompts(stack.tokenizer, args.rollout * (args.iterations + 1))
    phases = PhaseTimes(stack.device)
    rows = []
    with PeakMemory(stack.device) as memory, stack.training(dropout=False):
        for it in range(args.iterations + 1):
            batch = prompts[it * args.rollout : (it + 1) * args.rollout]
            batch = [p for p in batch for _ in range(args.samples_per_prompt)]
            state = torch.get_rng_state()
            timing: dict[str, float] = {}
            modes = [("", config, optimizers)] + ([(f"{free.advantage}_", free, free_optimizers)] if free else [])
            for prefix, mode_config, mode_optimizers in modes if it % 2 == 0 else modes[::-1]:
                torch.set_rng_state(state)
                figures = _iteration(stack, batch, mode_config, mode_optimizers, ptx, it, args, state, phases)
                timing.update({prefix + k: v for k, v in figures.items()})
            if it:
                rows.append(timing)
    result = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    result["time_total"] = result["time_generate"] + result["time_score"] + result["time_train"]
    if args.compare_before:
        result["before_time_total"] = sum(result[f"before_time_{k}"] for k in ("generate", "score", "train"))
        result["ratio_to_before"] = result["time_total"] / result["before_time_total"]
    if free is not None:
        name = free.advantage
        result[f"{name}_time_total"] = sum(result[f"{name}_time_{k}"] for k in ("generate", "score", "train"))
        for phase in ("score", "train", "total"):
            result[f"ratio_{name}_to_gae_{phase}"] = result[f"{name}_time_{phase}"] / result[f"time_{phase}"]
        result["value_role_mib"] = round(_role_bytes(stack, "value", optimizers.value) / 2**20, 2)
    if args.compare_logprobs:
        result["recompute_time_total"] = (
            result["recompute_time_generate"] + result["recompute_time_score"] + result["time_train"]
        )
        result["ratio_total"] = result["time_total"] / result["recompute_time_total"]
        result["max_logprob_gap"] = max(r["max_logprob_gap"] for r in rows)
    result.update(
        device=str(stack.device),
        quantization=args.quantization,
        dequantized_decoding=args.dequantized_decoding,
        rollout=args.rollout,
        mini=args.mini,
        micro=args.micro,
        max_new_tokens=args.max_new_tokens,
        ptx=args.ptx,
        samples_per_prompt=args.samples_per_prompt,
        threads=torch.get_num_threads(),
        peak_mib=round(memory.peak / 2**20, 1),
        added_mib=round((memory.peak - memory.before) / 2**20, 1),
    )
    if stack.device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(stack.device)
    share = {k: result[f"time_{k}"] / result["time_total"] for k in ("generate", "score", "train")}
    print(
        f"one PPO iteration: {result['time_total']:.1f} s = "
        f"generate {share['generate']:.0%}, score {share['score']:.0%}, "
        f"train {share['train']:.0%}; peak {result['peak_mib']:.0f} MiB (+{result['added_mib']:.0f} by PPO)"
    )
    if args.compare_logprobs:
        print(
            f"recomputing the policy's log-probs: {result['recompute_time_total']:.1f} s per iteration; "
            f"from generation: {result['time_total']:.1f} s ({result['ratio_total']:.2f}x); "
            f"largest log-prob gap {result['max_logprob_gap']:.1e}"
        )
    if args.compare_before:
        print(
            f"as before issue 15: {result['before_time_total']:.1f} s per iteration; now {result['time_total']:.1f} s "
            f"({result['ratio_to_before']:.2f}x)"
        )
    if free is not None:
        name = free.advantage
        print(
            f"critic-free ({name}) vs gae in this run: {result[f'{name}_time_total']:.1f} s vs "
            f"{result['time_total']:.1f} s per iteration ({result[f'ratio_{name}_to_gae_total']:.2f}x; score "
            f"{result[f'ratio_{name}_to_gae_score']:.2f}x, train {result[f'ratio_{name}_to_gae_train']:.2f}x); "
            f"the value role held {result['value_role_mib']:.1f} MiB (adapter, head, gradients, AdamW state)"
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
