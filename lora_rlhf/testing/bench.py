"""What the benchmark scripts (scripts/bench_*.py, scripts/trl_peer/) share: the demo model and prompts, memory
peaks, timing, and a PPO phase hook that times each phase.

Importable wherever lora_rlhf is installed, so a script imports it as it imports the library (no path set-up).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from lora_rlhf.data.chat import render_prompt
from lora_rlhf.demo.tasks import sample_tasks
from lora_rlhf.models.demo_model import demo_model_dir
from lora_rlhf.ppo.hooks import PHASES, PhaseEvent, PhaseHook
from lora_rlhf.ppo.rollout import EncodedPrompt

MIB = 2**20


def default_model() -> str:
    """The embedded demo model's folder (SmolLM2-135M-Instruct, converted once into the cache)."""
    return str(demo_model_dir())


def demo_prompts(tokenizer, count: int, seed: int = 3) -> list[EncodedPrompt]:
    """`count` of the demo's instruction tasks, rendered with the chat template and tokenized. Seed 3 gives the
    prompts bench_ppo.py, our_peak_phases.py and the TRL peer (export_prompts.py) all run on."""
    return [
        EncodedPrompt(tokenizer(render_prompt(tokenizer, t.prompt), add_special_tokens=False).input_ids, t.prompt)
        for t in sample_tasks(count, seed=seed)
    ]


def rss_bytes() -> int:
    """The process's resident set now (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory while the block runs, absolute and added to what was held before it.

    CUDA: the allocator's peak (tensors, model included). CPU: the process's resident set, sampled every 2 ms.
    """

    def __init__(self, device: torch.device) -> None:
        self.device, self.before, self.peak, self._stop = device, 0, 0, threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        else:
            self.before = self.peak = rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The median seconds of `repeats` calls of `fn` after one untimed warm-up call, and the last call's result."""
    fn()
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


class PhaseTimes(PhaseHook):
    """Seconds spent in each PPO phase (lora_rlhf.ppo.hooks), summed over its micro-batches and minibatches.

    On CUDA each phase's begin and end wait for the device, so queued kernels count in the phase that launched them.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._start = 0.0

    def on_phase_begin(self, event: PhaseEvent) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_phase_end(self, event: PhaseEvent) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds[event.phase] += time.perf_counter() - self._start

    def take(self) -> dict[str, float]:
        """{phase: seconds} since the last take, and start again from zero."""
        taken, self.seconds = self.seconds, dict.fromkeys(PHASES, 0.0)
        return taken
