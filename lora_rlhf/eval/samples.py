"""eval_samples.jsonl's one owner: every held-out prompt with each model's answers and, with a gold judge, each
model's gold score on it (issue 27), so that models of different runs can be compared prompt by prompt.

One row per prompt, in eval's order:
    {"prompt": <prompt>, "<model>": <answer> (or a list of its samples_per_prompt answers), ...,
     "gold": {"<model>": <the prompt's gold, the mean over its samples>, ..., "best_of_n": <the pick's gold>}}
"best_of_n" is only on the first `eval.best_of_n_prompts` rows (the prompts best-of-N ran on). Files written
before issue 27 have no "gold" key; they still read, with `EvalSamples.gold` None.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lora_rlhf.data.chat import Prompt
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.io import atomic_file

GOLD = "gold"  # the row key of the per-prompt gold scores
BEST_OF_N = "best_of_n"  # best-of-N's pick in a row's gold scores (it answers with an sft sample, not a model)


@dataclasses.dataclass
class EvalSamples:
    prompts: list[Prompt]  # (P,) the held-out prompts
    answers: dict[str, list[list[str]]]  # model -> (P, samples_per_prompt) its answers
    gold: dict[str, list[float]] | None = None  # model -> (P,) its gold per prompt; None: no judge, or pre-issue-27
    best_of_n_gold: list[float] | None = None  # (m,) gold of best-of-N's pick on each of the first m prompts


def write_eval_samples(
    path: str | Path,
    prompts: Sequence[Prompt],
    answers: Mapping[str, Sequence[str]],
    samples_per_prompt: int,
    *,
    gold: Mapping[str, Sequence[float]] | None = None,
    best_of_n_gold: Sequence[float] | None = None,
) -> None:
    """Write the rows atomically. `answers`: model -> (P * samples_per_prompt,) answers, prompt i's at rows
    i*n .. i*n + n-1; `gold`: model -> (P,) per-prompt gold; `best_of_n_gold`: (m <= P,) the picks' gold."""
    n = samples_per_prompt
    with atomic_file(path) as handle:
        for i, prompt in enumerate(prompts):
            row: dict[str, Any] = {"prompt": prompt}
            for name, texts in answers.items():
                row[name] = texts[i] if n == 1 else list(texts[i * n : (i + 1) * n])
            scores = {name: float(g[i]) for name, g in (gold or {}).items()}
            if best_of_n_gold is not None and i < len(best_of_n_gold):
                scores[BEST_OF_N] = float(best_of_n_gold[i])
            if scores:
                row[GOLD] = scores
            handle.write(json.dumps(row) + "\n")


def read_eval_samples(path: str | Path) -> EvalSamples:
    """The rows of `path` (as this or an earlier version wrote them); a missing or malformed file is a one-line
    LoraRlhfError naming it."""
    path = Path(path)
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise LoraRlhfError(f"{path} does not exist; run `lora-rlhf eval` first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LoraRlhfError(f"{path} is not readable JSONL ({' '.join(str(error).split())})") from None
    try:
        return _parse(rows)
    except (KeyError, TypeError, ValueError) as error:
        raise LoraRlhfError(f"{path}: {error}; rerun `lora-rlhf eval` to write it again") from None


def _parse(rows: list[Any]) -> EvalSamples:
    if not all(isinstance(row, dict) and "prompt" in row for row in rows):
        raise ValueError("every row must be an object with a prompt")
    names = [key for key in (rows[0] if rows else {}) if key not in ("prompt", GOLD)]
    answers = {name: [_answers(row[name], i, name) for i, row in enumerate(rows)] for name in names}
    samples = EvalSamples([row["prompt"] for row in rows], answers)
    if rows and GOLD in rows[0]:
        scored = [name for name in rows[0][GOLD] if name != BEST_OF_N]
        samples.gold = {name: [_score(row, i, name) for i, row in enumerate(rows)] for name in scored}
        m = sum(1 for row in rows if BEST_OF_N in row.get(GOLD, {}))  # the first m rows, as written
        samples.best_of_n_gold = [_score(row, i, BEST_OF_N) for i, row in enumerate(rows[:m])] or None
    return samples


def _answers(value: Any, row: int, name: str) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"row {row + 1}: {name} must be an answer or a list of answers, got {value!r:.60}")
    return texts


def _score(row: Mapping[str, Any], index: int, name: str) -> float:
    value = (row.get(GOLD) or {}).get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"row {index + 1}: gold.{name} must be a number, got {value!r:.60}")
    return float(value)
