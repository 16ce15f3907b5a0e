"""Where lora_rlhf's PPO peak (resident set, CPU) comes from: bench_ppo.py's iteration, split into phases.

    .venv/bin/python scripts/trl_peer/our_peak_phases.py [--micro 8] [--gradient-checkpointing]
        [--iterations 2] [--profile] [--rollout 8 --mini 8 --max-new-tokens 48]

Same stack and work as `scripts/bench_ppo.py --quantization none` (demo model fp32, sft/reward/policy/value
roles, dropout off, train mode), but the iteration is run phase by phase with the library's own functions:
generate (`rollout.sample`), score (`rollout.score`: reference log-probs, values, reward), advantages,
then per micro-batch the policy backward and the value backward (`optimize._policy_backward` /
`_value_backward`), and the two optimizer steps (`optimize._step`). For each phase it prints the resident
set at its start, the peak sampled every 2 ms inside it, and the resident set at its end; `--profile`
adds torch.profiler's per-op allocation totals (profile_memory=True) of the last iteration's train phase.
No library file is changed; `--gradient-checkpointing` sets BaseModelConfig.gradient_checkpointing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_sft_rm import default_model  # noqa: E402

from lora_rlhf.data.chat import render_prompt  # noqa: E402
from lora_rlhf.demo.tasks import sample_tasks  # noqa: E402
from lora_rlhf.models.base import BaseModelConfig  # noqa: E402
from lora_rlhf.models.roles import RoleStack  # noqa: E402
from lora_rlhf.ppo import optimize  # noqa: E402
from lora_rlhf.ppo.config import PPOConfig, SamplingConfig  # noqa: E402
from lora_rlhf.ppo.rewards import RunningMoments  # noqa: E402
from lora_rlhf.ppo.rollout import EncodedPrompt, Rollout, sample, score  # noqa: E402
from lora_rlhf.ppo.trainer import setup_roles  # noqa: E402
from lora_rlhf.train.loop import make_accelerator  # noqa: E402

MIB = 2**20


def rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


class Phases:
    """Resident-set peak per phase, sampled every 2 ms."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.trim = None  # libc.malloc_trim, with --malloc-trim
        self.window = self.peak = rss()
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            now = rss()
            self.window, self.peak = max(self.window, now), max(self.peak, now)

    def phase(self, it: int, name: str):
        phases = self

        class _Phase:
            def __enter__(self):
                self.start, self.t0, self.cpu0 = rss(), time.perf_counter(), sum(os.times()[:2])
                phases.window = self.start

            def __exit__(self, *exc):
                if phases.trim is not None:
                    phases.trim(0)
                end = rss()
                phases.window = max(phases.window, end)
                phases.rows.append(
                    {
                        "it": it,
                        "phase": name,
                        "start_mib": round(self.start / MIB),
                        "peak_mib": round(phases.window / MIB),
                        "end_mib": round(end / MIB),
                        "s": round(time.perf_counter() - self.t0, 2),
                        "cpu_s": round(sum(os.times()[:2]) - self.cpu0, 2),
                    }
                )

        return _Phase()

    def close(self) -> None:
        self._stop.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollout", type=int, default=8)
    parser.add_argument("--mini", type=int, default=8)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--iterations", type=int, default=2, help="iterations in all (the first is a warm-up)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--malloc-trim", action="store_true", help="glibc malloc_trim(0) after each phase (freed heap back to the OS)"
    )
    parser.add_argument("--profile", action="store_true", help="torch.profiler memory table of the last train phase")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    baseline = rss()
    stack = RoleStack.load(
        BaseModelConfig(
            name_or_path=default_model(), quantization="none", gradient_checkpointing=args.gradient_checkpointing
        )
    )
    loaded = rss()
    stack.add_role("sft")
    stack.add_role("reward")
    config = PPOConfig(
        rollout_batch_size=args.rollout,
        mini_batch_size=args.mini,
        micro_batch_size=args.micro,
        sampling=SamplingConfig(max_new_tokens=args.max_new_tokens),
    )
    setup_roles(stack, config)
    stack.set_trainable("policy", "value")
    stack.model.train()
    opt = optimize.build_optimizers(stack, config.optim, config.steps, make_accelerator("auto", stack.device))
    ready = rss()
    tasks = sample_tasks(args.rollout * args.iterations, seed=3)
    prompts = [
        EncodedPrompt(
            stack.tokenizer(render_prompt(stack.tokenizer, t.prompt), add_special_tokens=False).input_ids, t.prompt
        )
        for t in tasks
    ]
    phases = Phases()
    if args.malloc_trim:
        import ctypes

        phases.trim = ctypes.CDLL("libc.so.6").malloc_trim
    profile_table = None
    with stack.training(dropout=False):
        for it in range(args.iterations):
            batch = prompts[it * args.rollout : (it + 1) * args.rollout]
            with phases.phase(it, "generate"):
                sampled = sample(stack, batch, config.sampling)
            with phases.phase(it, "score"):
                scored = score(
                    stack,
                    sampled.input_ids,
                    sampled.attention_mask,
                    sampled.prompt_width,
                    temperature=1.0,
                    micro_batch_size=config.micro_batch_size,
                    with_policy=False,
                )
            scored["logprobs"], scored["entropy"] = sampled.logprobs, sampled.entropy
            rollout = Rollout(
                input_ids=sampled.input_ids,
                attention_mask=sampled.attention_mask,
                response_mask=sampled.response_mask.float(),
                prompt_width=sampled.prompt_width,
                prompts=[p.text for p in batch],
                responses=[""] * len(batch),
                finished=torch.ones(len(batch), dtype=torch.bool),
                **scored,
            )
            optimize.add_advantages(rollout, config.rewards.kl_coef, config.rewards, RunningMoments())
            profiling = args.profile and it == args.iterations - 1
            profiler = (
                torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
                if profiling
                else None
            )
            if profiler:
                profiler.__enter__()
            order = torch.arange(len(rollout))
            for begin in range(0, len(rollout), config.mini_batch_size):
                rows = order[begin : begin + config.mini_batch_size]
                micros = [rows[i : i + config.micro_batch_size] for i in range(0, len(rows), config.micro_batch_size)]
                for m, micro in enumerate(micros):
                    part = rollout.select(micro)
                    with phases.phase(it, f"policy_fwd_bwd[{m}]"):
                        optimize._policy_backward(stack, part, opt, config, None, len(micros))
                    with phases.phase(it, f"value_fwd_bwd[{m}]"):
                        optimize._value_backward(stack, part, opt, config, len(micros))
                with phases.phase(it, "optimizer_steps"):
                    for role, optimizer in (("policy", opt.policy), ("value", opt.value)):
                        params = stack.role_parameters(role)
                        optimize._step(params, optimizer, opt.accelerator, config.optim.max_grad_norm)
            if profiler:
                profiler.__exit__(None, None, None)
                profile_table = profiler.key_averages().table(sort_by="self_cpu_memory_usage", row_limit=15)
            del rollout, scored, sampled
    phases.close()
    print(
        f"RSS: before load {baseline / MIB:.0f} MiB, model loaded {loaded / MIB:.0f}, "
        f"roles+optimizers {ready / MIB:.0f}"
    )
    print(f"{'it':>2s} {'phase':18s} {'start':>7s} {'peak':>7s} {'end':>7s} {'s':>7s} {'cpu_s':>7s}")
    for r in phases.rows:
        print(
            f"{r['it']:2d} {r['phase']:18s} {r['start_mib']:7d} {r['peak_mib']:7d} {r['end_mib']:7d} "
            f"{r['s']:7.2f} {r['cpu_s']:7.2f}"
        )
    timed = [r for r in phases.rows if r["it"] > 0] or phases.rows
    result = {
        "micro": args.micro,
        "gradient_checkpointing": args.gradient_checkpointing,
        "malloc_trim": args.malloc_trim,
        "peak_mib": round(phases.peak / MIB, 1),
        "rss_loaded_mib": round(loaded / MIB, 1),
        "rss_ready_mib": round(ready / MIB, 1),
        "s_per_iteration": round(sum(r["s"] for r in timed) / max(1, args.iterations - 1), 2),
        "cpu_s_per_iteration": round(sum(r["cpu_s"] for r in timed) / max(1, args.iterations - 1), 2),
        "peak_phase": max(phases.rows, key=lambda r: r["peak_mib"])["phase"],
    }
    if profile_table:
        print(profile_table)
    print("RESULT " + json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps({"result": result, "phases": phases.rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
