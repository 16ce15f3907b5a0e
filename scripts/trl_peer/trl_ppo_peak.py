"""Peak memory and time per iteration of TRL 0.25.1's PPOTrainer, four fp32 models, on bench_ppo.py's work.

Runs in the peer env (scripts/trl_peer/setup.sh makes .venv-trl: trl 0.25.1 needs transformers 4.x):

    .venv-trl/bin/python scripts/trl_peer/trl_ppo_peak.py --prompts runs/trl_peer/prompts.jsonl \
        [--model ~/.cache/lora_rlhf/smollm2-135m-instruct-q4_1] [--iterations 4] [--out result.json]

The work matches `scripts/bench_ppo.py --quantization none --rollout 8 --mini 8 --micro 8 --max-new-tokens 48`:
8 prompts per rollout, 1 PPO epoch, one minibatch of 8, micro batch 8 (no gradient accumulation), forward batch
8 while scoring, 48 new tokens at temperature 1, stop at EOS. TRL's own PPO setup: policy, reference policy,
reward model and value model are four separate full models (fp32, no PEFT), the reward and value models
`AutoModelForSequenceClassification` (num_labels=1) from the same checkpoint, as in TRL's examples/scripts/ppo;
one AdamW over policy + value (PolicyAndValueWrapper). TRL's PPOTrainer does not switch gradient checkpointing
on by itself (only Trainer's own loop does), so none runs, as with TRL's example script.

Prompts: the JSONL written by export_prompts.py (bench_ppo.py's prompts, token ids as our side encodes them).
The model: the local HF folder lora_rlhf converts the demo GGUF into (nothing from the Hub). That folder was
saved by transformers 5, so two things are translated for 4.x here: the RoPE base (`rope_parameters.rope_theta`
-> `rope_theta`; 4.x would otherwise silently use 10000) and the tokenizer (loaded from tokenizer.json).

Padding: TRL masks every token equal to the pad id. SmolLM2's pad is its EOS <|im_end|>, which every chat
prompt contains, so the pad is set to <|endoftext|> (id 0, never in a prompt), as TRL's examples add a [PAD].

Reports (one JSON line at the end, prefixed `RESULT `): peak resident set of the process over its whole life
(`ru_maxrss`, loading included), the resident-set peak sampled every 2 ms during `train()` (psutil, like
lora_rlhf.testing.bench.PeakMemory in bench_ppo.py), the resident set before `train()`, and seconds per iteration
(the first is a warm-up, as in bench_ppo.py: `s_per_iteration` is the median of the others).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import threading
import time
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

MIB = 2**20


def rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Sampler:
    """Resident-set peak, sampled every 2 ms in a thread, plus the peak since the last `mark` (per phase)."""

    def __init__(self) -> None:
        self.peak = self.window = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            now = rss()
            self.peak = max(self.peak, now)
            self.window = max(self.window, now)

    def mark(self) -> int:
        window, self.window = self.window, rss()
        return window

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", default="runs/trl_peer/prompts.jsonl")
    parser.add_argument("--model", default=None, help="local HF folder (default: the one next to --prompts)")
    parser.add_argument("--iterations", type=int, default=4, help="PPO iterations (the first is a warm-up)")
    parser.add_argument("--rollout", type=int, default=8)
    parser.add_argument("--mini", type=int, default=8)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="policy and value (not TRL's default)")
    parser.add_argument("--out", default=None, help="also write the result JSON here")
    return parser.parse_args()


def load_tokenizer(folder: Path):
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.padding_side = "left"  # PPO queries are left-padded
    return tokenizer


def load_config(folder: Path, pad_id: int):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    raw = json.loads((folder / "config.json").read_text())
    theta = (raw.get("rope_parameters") or {}).get("rope_theta") or raw.get("rope_theta")
    if theta:
        config.rope_theta = float(theta)
    config.pad_token_id = pad_id
    config.num_labels = 1
    return config


def main() -> None:
    args = parse_args()
    prompts_file = Path(args.prompts)
    folder = Path(args.model or Path(str(prompts_file) + ".model").read_text().strip()).expanduser()
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback
    from trl import PPOConfig, PPOTrainer

    torch.manual_seed(0)
    tokenizer = load_tokenizer(folder)
    config = load_config(folder, tokenizer.pad_token_id)
    if args.rollout % args.mini or args.mini % args.micro:
        raise SystemExit("--mini must divide --rollout and --micro must divide --mini")
    rows = [json.loads(line) for line in prompts_file.read_text().splitlines() if line.strip()]
    needed = args.rollout * args.iterations
    if len(rows) < needed:
        raise SystemExit(f"{prompts_file} has {len(rows)} prompts, {needed} needed")
    rows = rows[:needed]
    if any(tokenizer.pad_token_id in r["input_ids"] for r in rows):
        raise SystemExit("a prompt contains the pad token; TRL would mask it out")
    train = Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows]})
    evaluation = Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows[: args.rollout]]})

    before_load = rss()
    fp32 = {"dtype": torch.float32}
    policy = AutoModelForCausalLM.from_pretrained(folder, config=config, **fp32)
    ref_policy = AutoModelForCausalLM.from_pretrained(folder, config=config, **fp32)
    reward = AutoModelForSequenceClassification.from_pretrained(folder, config=config, **fp32)
    value = AutoModelForSequenceClassification.from_pretrained(folder, config=config, **fp32)
    for model in (policy, ref_policy):
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if args.gradient_checkpointing:
        for model in (policy, value):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
    loaded = rss()

    ppo = PPOConfig(
        output_dir="/tmp/trl_peer_out",
        exp_name="trl_peer",
        use_cpu=True,
        bf16=False,
        fp16=False,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
        per_device_train_batch_size=args.micro,
        # TRL: rollout = per_device_train_batch_size * gradient_accumulation_steps,
        # minibatch = rollout / num_mini_batches
        gradient_accumulation_steps=args.rollout // args.micro,
        num_mini_batches=args.rollout // args.mini,
        local_rollout_forward_batch_size=args.micro,
        num_ppo_epochs=1,
        total_episodes=args.rollout * args.iterations,
        response_length=args.max_new_tokens,
        temperature=1.0,
        stop_token="eos",
        num_sample_generations=0,
        gradient_checkpointing=args.gradient_checkpointing,
    )

    stamps: list[float] = []
    phase_peaks: list[int] = []

    class Clock(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            stamps.append(time.perf_counter())
            phase_peaks.append(sampler.mark())

    trainer = PPOTrainer(
        args=ppo,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward,
        train_dataset=train,
        value_model=value,
        eval_dataset=evaluation,
        callbacks=[Clock()],
    )
    ready = rss()
    models = (policy, ref_policy, reward, value)
    with Sampler() as sampler:
        start = time.perf_counter()
        trainer.train()
    times = [b - a for a, b in zip([start, *stamps], stamps)]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "side": "trl",
        "trl": __import__("trl").__version__,
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": str(folder),
        "rollout": args.rollout,
        "mini": args.mini,
        "micro": args.micro,
        "max_new_tokens": args.max_new_tokens,
        "gradient_checkpointing": args.gradient_checkpointing,
        "iterations": len(times),
        "rss_before_load_mib": round(before_load / MIB, 1),
        "rss_after_load_mib": round(loaded / MIB, 1),
        "rss_before_train_mib": round(ready / MIB, 1),
        "peak_train_mib": round(sampler.peak / MIB, 1),
        "added_by_train_mib": round((sampler.peak - ready) / MIB, 1),
        "peak_per_iteration_mib": [round(p / MIB, 1) for p in phase_peaks],
        "maxrss_mib": round(usage.ru_maxrss * 1024 / MIB, 1),
        "s_per_iteration_all": [round(t, 2) for t in times],
        "s_per_iteration": round(statistics.median(times[1:] if len(times) > 1 else times), 2),
        "params_total_m": round(sum(p.numel() for m in models for p in m.parameters()) / 1e6, 1),
    }
    text = json.dumps(result)
    print("RESULT " + text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
