"""PPO throughput and all-reduce traffic on 1 and N processes: the same recipe, run by `accelerate launch`.

    python scripts/bench_distributed.py [--num-processes 1 2] [--config recipes/tiny-test.yaml]
                                        [--output-dir runs/bench-distributed] [KEY=VALUE ...]

For each process count it runs the whole pipeline of the recipe (sft -> rm -> ppo -> eval) into its own run
directory, N > 1 through `accelerate launch --multi_gpu --num_processes N` (torchrun; NCCL on GPUs, gloo on a
machine without CUDA), then reads metrics/ppo.jsonl and prints one row per process count:

    samples/s            rollout_batch_size / the median PPO iteration time (generate + score + train),
                         first iteration left out (warm-up)
    all-reduce per step  bytes the policy and value gradients sent per optimizer step, as logged by PPO
                         (`allreduce_bytes`: the fp32 LoRA gradients of both roles, heads included)

The recipe's global batch sizes do not depend on N, so the rows do the same work. On a machine whose cores
the processes share (a 2-core CPU box), N processes compete for the same cores and the speed ratio says
little about GPUs; the bytes per step are what they would be anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from lora_rlhf.metrics import read_metrics
from lora_rlhf.paths import RunLayout


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-processes", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    parser.add_argument("--config", default="recipes/tiny-test.yaml", help="the recipe (default: the tiny model)")
    parser.add_argument("--output-dir", default="runs/bench-distributed", help="one run directory per count in it")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE recipe overrides, e.g. ppo.steps=4")
    return parser.parse_args()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(processes: int, args: list[str]) -> list[str]:
    """`python -m lora_rlhf ARGS` for one process, `accelerate launch ... -m lora_rlhf ARGS` for several."""
    if processes == 1:
        return [sys.executable, "-m", "lora_rlhf", *args]
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    return [
        accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "lora_rlhf", *args,
    ]  # fmt: skip


def summarize(run_dir: Path, rollout_batch_size: int) -> dict[str, float]:
    """samples/s and bytes all-reduced per optimizer step from a finished run's metrics/ppo.jsonl."""
    rows = read_metrics(RunLayout(run_dir).metrics("ppo"))
    if not rows:
        raise SystemExit(f"{run_dir}: metrics/ppo.jsonl has no rows; did the PPO stage run?")
    timed = rows[1:] or rows
    seconds = statistics.median(r["time_generate"] + r["time_score"] + r["time_train"] for r in timed)
    return {
        "iterations": len(rows),
        "seconds_per_iteration": seconds,
        "samples_per_second": rollout_batch_size / seconds,
        "allreduce_bytes_per_step": statistics.median(r.get("allreduce_bytes", 0.0) for r in rows),
    }


def main() -> None:
    args = parse_args()
    root = Path(args.output_dir)
    results = {}
    for n in args.num_processes:
        run_dir = root / f"{n}-process"
        shutil.rmtree(run_dir, ignore_errors=True)
        stage_args = ["pipeline", "--config", args.config, "--output-dir", str(run_dir), *args.overrides]
        command = launch_command(n, stage_args)
        print(f"$ {' '.join(command)}", flush=True)
        env = dict(os.environ)
        if n > 1:  # one thread per process, as torchrun sets it, so N processes share the cores
            env.setdefault("OMP_NUM_THREADS", "1")
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{n} process(es) failed:\n{done.stderr[-3000:]}")
        recipe = yaml.safe_load(RunLayout(run_dir).recipe_path.read_text())
        results[n] = summarize(run_dir, recipe["ppo"]["rollout_batch_size"])
    print("\n| processes | PPO iteration (s) | samples/s | all-reduce per optimizer step |\n|---|---:|---:|---:|")
    for n, r in results.items():
        sent = f"{r['allreduce_bytes_per_step'] / 2**20:.2f} MiB" if n > 1 else "— (no all-reduce)"
        print(f"| {n} | {r['seconds_per_iteration']:.2f} | {r['samples_per_second']:.2f} | {sent} |")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
