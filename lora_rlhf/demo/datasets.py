"""The demo's data files, in the formats of docs/design.md ("Data formats"), deterministic per seed.

Training files draw only "train" prompts and the eval file only "eval" prompts (`tasks.split_of`, a hash
of the prompt text), so held-out prompts never reach SFT, the RM or PPO whatever seeds are used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from lora_rlhf.data.chat import Prompt
from lora_rlhf.data.prompts import prompt_text
from lora_rlhf.demo.labeler import Labeler
from lora_rlhf.demo.tasks import sample_tasks
from lora_rlhf.io import atomic_file


def write_jsonl(path: str | Path, rows: Sequence[dict]) -> Path:
    """Write one JSON object per line, atomically."""
    with atomic_file(path) as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return Path(path)


def demonstration_rows(n: int, seed: int, families: Sequence[str] | None = None) -> list[dict]:
    """`n` {"prompt", "completion"} rows: training tasks with the labeler's ideal responses."""
    labeler = Labeler(disagreement=0.0, seed=seed)
    tasks = sample_tasks(n, seed, families, split="train")
    return [{"prompt": task.prompt, "completion": labeler.demonstrate(task)} for task in tasks]


def prompt_rows(n: int, seed: int, families: Sequence[str] | None = None, split: str = "train") -> list[dict]:
    """`n` {"prompt"} rows of the given split ("train" for PPO and rankings, "eval" held out)."""
    return [{"prompt": task.prompt} for task in sample_tasks(n, seed, families, split=split)]


def write_demonstrations(path: str | Path, n: int, seed: int, families: Sequence[str] | None = None) -> Path:
    """Write `n` demonstrations for SFT as JSONL {"prompt", "completion"}."""
    return write_jsonl(path, demonstration_rows(n, seed, families))


def write_prompts(path: str | Path, n: int, seed: int, families: Sequence[str] | None = None) -> Path:
    """Write `n` training prompts as JSONL {"prompt"}."""
    return write_jsonl(path, prompt_rows(n, seed, families, split="train"))


def write_eval_prompts(path: str | Path, n: int, seed: int, families: Sequence[str] | None = None) -> Path:
    """Write `n` held-out prompts as JSONL {"prompt"} (never among any training file's prompts)."""
    return write_jsonl(path, prompt_rows(n, seed, families, split="eval"))


def distinct_responses(responses: Sequence[str]) -> list[str]:
    """Responses with surrounding whitespace removed and duplicates dropped (first kept, order kept).

    Identical responses would be exact ties: their pair says nothing, and keeping both would weigh that
    response twice in the prompt's C(K, 2) pairs.
    """
    seen: dict[str, None] = {}
    for response in responses:
        seen.setdefault(response.strip(), None)
    return list(seen)


def ranking_rows(
    prompts: Sequence[Prompt], samples_per_prompt: Sequence[Sequence[str]], labeler: Labeler
) -> list[dict]:
    """{"prompt", "responses": [K], "ranks": [K]} per prompt, ranked by `labeler` (0 = best).

    `samples_per_prompt[i]` holds the responses sampled for `prompts[i]`. Duplicates are dropped first, so
    K may be smaller than the number sampled; prompts left with fewer than 2 distinct responses are skipped, and
    so are those whose responses a labeler with ties (`demo.ties`) judged all equal.
    """
    if len(prompts) != len(samples_per_prompt):
        raise ValueError(f"{len(prompts)} prompts but {len(samples_per_prompt)} lists of samples")
    rows = []
    for prompt, samples in zip(prompts, samples_per_prompt):
        responses = distinct_responses(samples)
        if len(responses) < 2:
            continue
        ranks = labeler.rank(prompt_text(prompt), responses)
        if len(set(ranks)) < 2:  # a labeler with ties judged every response equal: no preference to write
            continue
        rows.append({"prompt": prompt, "responses": responses, "ranks": ranks})
    return rows
