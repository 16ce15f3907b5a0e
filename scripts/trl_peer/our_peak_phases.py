"""Where lora_rlhf's PPO peak (resident set, CPU) comes from: bench_ppo.py's iteration, split into phases.

    .venv/bin/python scripts/trl_peer/our_peak_phases.py [--micro 8] [--gradient-checkpointing]
        [--iterations 2] [--profile] [--rollout 8 --mini 8 --max-new-tokens 48]

Same stack and work as `scripts/bench_ppo.py --quantization none` (demo model fp32, sft/reward/policy/value
roles, dropout off, train mode): each iteration is the stage's own `make_rollout`, `add_advantages` and
`train_on_rollout`, watched through the PPO phase hooks (lora_rlhf.ppo.hooks): generate, score, advantages,
then per micro-batch the policy backward and the value backward, and the optimizer steps of each minibatch.
For each phase it prints the resident set at its start, the peak sampled every 2 ms inside it, and the
resident set at its end; `--profile` adds torch.profiler's per-op allocation totals (profile_memory=True) of
the last iteration's train phase. No library file is changed; `--gradient-checkpointing` sets
BaseModelConfig.gradient_checkpointing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import threading
import time
from pathlib import Path

import torch

from lora_rlhf.models.base import BaseModelConfig
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.ppo.config import PPOConfig, SamplingConfig
from lora_rlhf.ppo.hooks import PhaseEvent, PhaseHook
from lora_rlhf.ppo.optimize import add_advantages, build_optimizers, train_on_rollout
from lora_rlhf.ppo.rewards import RunningMoments
from lora_rlhf.ppo.rollout import make_rollout
from lora_rlhf.ppo.trainer import setup_roles
from lora_rlhf.testing.bench import MIB, default_model, demo_prompts, rss_bytes
from lora_rlhf.train.loop import make_accelerator


class PhaseMemory(PhaseHook):
    """Resident set at each phase's start and end, its peak inside (sampled every 2 ms), wall and CPU seconds."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.iteration = 0  # set by the loop, written in each row
        self.trim = None  # libc.malloc_trim, with --malloc-trim
        self.window = self.peak = rss_bytes()
        self._start = (0, 0.0, 0.0)
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            now = rss_bytes()
            self.window, self.peak = max(self.window, now), max(self.peak, now)

    def on_phase_begin(self, event: PhaseEvent) -> None:
        self._start = (rss_bytes(), time.perf_counter(), sum(os.times()[:2]))
        self.window = self._start[0]

    def on_phase_end(self, event: PhaseEvent) -> None:
        if self.trim is not None:
            self.trim(0)
        end = rss_bytes()
        self.window = max(self.window, end)
        start, t0, cpu0 = self._start
        self.rows.append(
            {
                "it": self.iteration,
                "phase": event.phase if event.micro is None else f"{event.phase}[{event.micro}]",
                "start_mib": round(start / MIB),
                "peak_mib": round(self.window / MIB),
                "end_mib": round(end / MIB),
                "s": round(time.perf_counter() - t0, 2),
                "cpu_s": round(sum(os.times()[:2]) - cpu0, 2),
            }
        )

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

    baseline = rss_bytes()
    stack = RoleStack.load(
        BaseModelConfig(
            name_or_path=default_model(), quantization="none", gradient_checkpointing=args.gradient_checkpointing
        )
    )
    loaded = rss_bytes()
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
    opt = build_optimizers(stack, config.optim, config.steps, make_accelerator("auto", stack.device))
    ready = rss_bytes()
    prompts = demo_prompts(stack.tokenizer, args.rollout * args.iterations)
    phases = PhaseMemory()
    if args.malloc_trim:
        import ctypes

        phases.trim = ctypes.CDLL("libc.so.6").malloc_trim
    profile_table = None
    kl_coef = config.rewards.kl_coef
    with stack.training(dropout=False):
        for it in range(args.iterations):
            phases.iteration = it
            batch = prompts[it * args.rollout : (it + 1) * args.rollout]
            rollout, _ = make_rollout(stack, batch, config.sampling, config.micro_batch_size, hooks=[phases])
            add_advantages(rollout, kl_coef, config.rewards, RunningMoments(), hooks=[phases])
            profiling = args.profile and it == args.iterations - 1
            profiler = (
                torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
                if profiling
                else contextlib.nullcontext()
            )
            with profiler:
                train_on_rollout(stack, rollout, opt, config, None, it, kl_coef, hooks=[phases])
            if profiling:
                profile_table = profiler.key_averages().table(sort_by="self_cpu_memory_usage", row_limit=15)
            del rollout
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
