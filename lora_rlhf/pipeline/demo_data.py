"""The embedded demo's data, made in the run directory: the labeler writes demonstrations, ranks K samples
of the SFT model per prompt (InstructGPT §3.2's comparison data), and judges at evaluation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lora_rlhf.config.recipe import RecipeConfig
from lora_rlhf.data.chat import render_prompt
from lora_rlhf.io import atomic_file
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.pipeline.run_dir import RunDir
from lora_rlhf.ppo.rollout import NEUTRAL_SAMPLING

logger = logging.getLogger(__name__)

FILES = {
    "demonstrations": "demonstrations.jsonl",
    "rankings": "rankings.jsonl",
    "prompts": "prompts.jsonl",
    "ranking_prompts": "ranking_prompts.jsonl",
    "eval_prompts": "eval_prompts.jsonl",
}
# Sequences per batched generate call when sampling the K responses to rank.
_SAMPLES_PER_CALL = 32
# Each split of the task draws from its own seed offset, so no prompt is shared by accident.
_SPLIT_SEEDS = {"demonstrations": 0, "ranking_prompts": 1, "prompts": 2, "eval_prompts": 3}


def fill_paths(recipe: RecipeConfig, run: RunDir) -> None:
    """Point every stage's empty data path at the demo's files in `run`/data (absolute paths)."""
    path = {name: str(run.data(file).resolve()) for name, file in FILES.items()}
    pairs = [
        (recipe.sft.data, path["demonstrations"]),
        (recipe.rm.data, path["rankings"]),
        (recipe.rm.demonstrations, path["demonstrations"]),
        (recipe.ppo.prompts, path["prompts"]),
        (recipe.ppo.ptx, path["demonstrations"]),
        (recipe.eval.prompts, path["eval_prompts"]),
    ]
    for spec, default in pairs:
        if not spec.path:
            spec.path = default


def write_task_data(recipe: RecipeConfig, run: RunDir) -> None:
    """Write demonstrations and the PPO, ranking and eval prompts (once; later calls find them)."""
    from lora_rlhf.demo.labeler import Labeler
    from lora_rlhf.demo.tasks import sample_tasks

    demo = recipe.demo
    counts = {"demonstrations": demo.demonstrations, "ranking_prompts": demo.ranking_prompts,
              "prompts": demo.ppo_prompts, "eval_prompts": demo.eval_prompts}
    labeler = Labeler(disagreement=demo.disagreement, seed=demo.seed)
    seen: set[str] = set()
    for split, count in counts.items():
        tasks = _distinct(sample_tasks(count * 2, seed=demo.seed * 101 + _SPLIT_SEEDS[split], families=demo.families), seen, count)
        target = run.data(FILES[split])
        if target.exists():
            continue
        if split == "demonstrations":
            rows = [{"prompt": t.prompt, "completion": labeler.demonstrate(t)} for t in tasks]
        else:
            rows = [{"prompt": t.prompt} for t in tasks]
        _write_jsonl(target, rows)
        logger.info("demo: wrote %d rows to %s", len(rows), target)


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
    from lora_rlhf.demo.datasets import ranking_rows
    from lora_rlhf.demo.labeler import Labeler

    target = run.data(FILES["rankings"])
    if target.exists():
        return
    demo = recipe.demo
    prompts = [json.loads(line)["prompt"] for line in run.data(FILES["ranking_prompts"]).read_text().splitlines()]
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
    rows = ranking_rows(prompts, samples, Labeler(disagreement=demo.disagreement, seed=demo.seed))
    _write_jsonl(target, rows)
    logger.info("demo: the labeler ranked %d prompts x %d responses into %s", len(rows), demo.responses_per_prompt, target)


def _sample(stack: RoleStack, prompts: list[str], temperature: float, max_new_tokens: int) -> list[str]:
    """One sampled response of the sft role per prompt (prompts repeat to get K samples each)."""
    tokenizer = stack.tokenizer
    rendered = [render_prompt(tokenizer, p) for p in prompts]
    enc = tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False).to(stack.device)
    out = stack.generate("sft", enc.input_ids, enc.attention_mask, do_sample=True, temperature=temperature,
                         top_p=1.0, top_k=0, max_new_tokens=max_new_tokens, **NEUTRAL_SAMPLING)
    return [t.strip() for t in tokenizer.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)]


def gold_fn():
    """The labeler's gold judge: (prompts, responses) -> graded scores in [0, 1]."""
    from lora_rlhf.demo.judge import gold_scores

    return gold_scores


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with atomic_file(path) as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
