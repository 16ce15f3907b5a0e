"""The embedded demo's data, made in the run directory: the labeler writes demonstrations, ranks K samples
of the SFT model per prompt (InstructGPT §3.2's comparison data), and judges at evaluation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lora_rlhf.config.recipe import RecipeConfig
from lora_rlhf.data.chat import Prompt, render_prompt
from lora_rlhf.data.sources import DatasetSpec
from lora_rlhf.demo.datasets import ranking_rows
from lora_rlhf.demo.judge import gold_scores
from lora_rlhf.demo.labeler import Labeler
from lora_rlhf.demo.tasks import sample_tasks
from lora_rlhf.demo.text import text_rows
from lora_rlhf.io import atomic_file
from lora_rlhf.models import engine
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.models.sequences import until_stop
from lora_rlhf.pipeline import ifeval_data
from lora_rlhf.pipeline.run_dir import RunDir

logger = logging.getLogger(__name__)

FILES = {
    "demonstrations": "demonstrations.jsonl",
    "rankings": "rankings.jsonl",
    "prompts": "prompts.jsonl",
    "ranking_prompts": "ranking_prompts.jsonl",
    "eval_prompts": "eval_prompts.jsonl",
    "eval_ranking_prompts": "eval_ranking_prompts.jsonl",
    "eval_rankings": "eval_rankings.jsonl",
    "ptx_text": "ptx_text.jsonl",
    "lm_text": "lm_text.jsonl",
}
# Paragraphs of general text written for PPO-ptx and for the held-out LM loss (demo/text.py).
_TEXT_ROWS = 64
# Sequences per batched generate call when sampling the K responses to rank (on the CPU a decoding step
# costs little more for 64 rows than for 32).
_SAMPLES_PER_CALL = 64
# Each split of the task draws from its own seed offset, so no prompt is shared by accident.
_SPLIT_SEEDS = {"demonstrations": 0, "ranking_prompts": 1, "prompts": 2, "eval_prompts": 3, "eval_ranking_prompts": 4}


def fill_paths(recipe: RecipeConfig, run: RunDir) -> None:
    """Point every stage's empty data path at the demo's files in `run`/data (absolute paths)."""
    path = {name: str(run.data(file).resolve()) for name, file in FILES.items()}
    pairs = [
        (recipe.sft.data, path["demonstrations"]),
        (recipe.rm.data, path["rankings"]),
        (recipe.rm.demonstrations, path["demonstrations"]),
        (recipe.ppo.prompts, path["prompts"]),
        # PPO-ptx mixes general text standing in for the paper's pretraining data, never the demonstrations:
        # a gain over SFT must come from the reinforcement term, not from more supervised training.
        (recipe.ppo.ptx.data, path["ptx_text"]),
        (recipe.eval.prompts, path["eval_prompts"]),
        (recipe.eval.rankings, path["eval_rankings"]),
        (recipe.eval.lm_text, path["lm_text"]),
    ]
    for spec, default in pairs:
        if not spec.path:
            spec.path = default
    recipe.eval.rankings_max_length = recipe.rm.max_length
    if recipe.rm.eval_data is None and recipe.rm.eval_fraction == 0:
        # The RM stage's held-out figure comes from the same held-out rankings eval uses, so every ranked
        # training prompt is trained on rather than 20% of them being held back.
        recipe.rm.eval_data = DatasetSpec(path["eval_rankings"])


def write_task_data(recipe: RecipeConfig, run: RunDir, stack: RoleStack | None = None) -> None:
    """Write demonstrations, the PPO, ranking and eval prompts, and the general text (once; later calls find them).

    The IFEval-style task (`demo.task: ifeval`) writes its demonstrations from the base's answers: `stack`.
    """
    demo = recipe.demo
    for name, use in (("ptx_text", "ptx"), ("lm_text", "heldout")):
        if not run.data(FILES[name]).exists():
            _write_jsonl(run.data(FILES[name]), text_rows(use, _TEXT_ROWS))
    if demo.task == "ifeval":
        if stack is None:
            raise ValueError("the IFEval-style task writes its demonstrations from the base model: pass the stack")
        ifeval_data.write_task_data(demo, run, stack, FILES, as_prompt)
        return
    counts = {
        "demonstrations": demo.demonstrations,
        "ranking_prompts": demo.ranking_prompts,
        "prompts": demo.ppo_prompts,
        "eval_prompts": demo.eval_prompts,
        "eval_ranking_prompts": demo.eval_ranking_prompts,
    }
    labeler = Labeler(disagreement=demo.disagreement, seed=demo.seed)
    seen: set[str] = set()
    for split, count in counts.items():
        tasks = _distinct(
            sample_tasks(count * 2, seed=demo.seed * 101 + _SPLIT_SEEDS[split], families=demo.families), seen, count
        )
        target = run.data(FILES[split])
        if target.exists():
            continue
        if split == "demonstrations":
            rows = [
                {"prompt": as_prompt(t.prompt, demo.system_prompt), "completion": labeler.demonstrate(t)} for t in tasks
            ]
        else:
            rows = [{"prompt": as_prompt(t.prompt, demo.system_prompt)} for t in tasks]
        _write_jsonl(target, rows)
        logger.info("demo: wrote %d rows to %s", len(rows), target)


def as_prompt(text: str, system_prompt: str | None) -> Prompt:
    """A task's instruction as a data row's prompt: the text alone, or (conversational) a system turn and it."""
    if system_prompt is None:
        return text
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": text}]


def _distinct(tasks, seen: set[str], count: int):
    """The first `count` tasks whose prompts no earlier split used (eval stays held out)."""
    kept = []
    for task in tasks:
        if task.prompt not in seen and len(kept) < count:
            kept.append(task)
            seen.add(task.prompt)
    return kept


@torch.no_grad()
def write_rankings(stack: RoleStack, recipe: RecipeConfig, run: RunDir) -> None:
    """Sample K responses per ranking prompt from the sft role and have the labeler rank them."""
    target, held_target = run.data(FILES["rankings"]), run.data(FILES["eval_rankings"])
    if target.exists() and held_target.exists():
        return
    demo = recipe.demo
    train = _read_prompts(run.data(FILES["ranking_prompts"]))
    held = _read_prompts(run.data(FILES["eval_ranking_prompts"]))
    samples = _sample_k(stack, train + held, demo)
    labeler = Labeler(disagreement=demo.disagreement, seed=demo.seed, judge=gold_fn(recipe, run), ties=demo.ties)
    # The held-out rankings come from the same labeler (its noise included): eval measures the RM against
    # them and, separately, against the gold order of the same responses.
    for path, prompts, part in ((target, train, samples[: len(train)]), (held_target, held, samples[len(train) :])):
        rows = ranking_rows(prompts, part, labeler)
        _write_jsonl(path, rows)
        logger.info(
            "demo: the labeler ranked %d of %d prompts x %d responses into %s (the rest: every response equal)",
            len(rows),
            len(prompts),
            demo.responses_per_prompt,
            path,
        )


def _read_prompts(path: Path) -> list[Prompt]:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines()]


def _sample_k(stack: RoleStack, prompts: list[Prompt], demo) -> list[list[str]]:
    """K samples of the sft role per prompt, several prompts per batched generate call."""
    torch.manual_seed(demo.seed)
    samples: list[list[str]] = []
    k = demo.responses_per_prompt
    per_call = max(1, _SAMPLES_PER_CALL // k)  # one batched generate call serves several prompts
    with tqdm(total=len(prompts), desc="demo: sampling responses to rank", unit="prompt") as progress:
        for begin in range(0, len(prompts), per_call):
            chunk = prompts[begin : begin + per_call]
            flat = _sample(stack, [p for p in chunk for _ in range(k)], demo.sample_temperature, demo.max_new_tokens)
            samples += [flat[i * k : (i + 1) * k] for i in range(len(chunk))]
            progress.update(len(chunk))
    return samples


def _sample(stack: RoleStack, prompts: list[Prompt], temperature: float, max_new_tokens: int) -> list[str]:
    """One sampled response of the sft role per prompt (prompts repeat to get K samples each)."""
    tokenizer = stack.tokenizer
    rendered = [render_prompt(tokenizer, p) for p in prompts]
    enc = tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False).to(stack.device)
    stops = stack.eos_ids()
    out = engine.sample(
        stack, "sft", enc.input_ids, enc.attention_mask, max_new_tokens=max_new_tokens, temperature=temperature
    ).sequences
    responses = [until_stop(row, stops, tokenizer.pad_token_id)[0] for row in out[:, enc.input_ids.shape[1] :]]
    return [t.strip() for t in tokenizer.batch_decode(responses, skip_special_tokens=True)]


def gold_fn(recipe: RecipeConfig, run: RunDir):
    """The labeler's gold judge: (prompts, responses) -> graded scores in [0, 1]."""
    if recipe.demo.task == "ifeval":
        return ifeval_data.gold_fn(run)
    return gold_scores


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with atomic_file(path) as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
