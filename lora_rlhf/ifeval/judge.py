"""The gold judge of the IFEval-style training task: the benchmark's own checkers, graded.

A response's gold score is the mean over its prompt's instructions of (strict + loose) / 2: 1 for an
instruction followed as written, 1/2 where only the loose reading (first/last line or markdown asterisks
removed) follows it, 0 otherwise. Graded rather than all-or-nothing so that ranking K samples carries signal
when none follows every instruction (InstructGPT's labelers ranked by overall quality, §3.4); the loose half
credit counts what the benchmark's loose accuracy counts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.ifeval.checkers import check
from lora_rlhf.ifeval.tasks import InstructionTask


def gold_score(task: InstructionTask, response: str) -> float:
    """In [0, 1]: the mean over instructions of strict + loose halves."""
    verdicts = check(task.prompt, task.instruction_ids, task.kwargs, response)
    return sum((s + lo) / 2 for s, lo in zip(verdicts.strict, verdicts.loose)) / len(task.instruction_ids)


class TaskBook:
    """The generated tasks of a run by prompt text, so a judge given (prompt, response) finds the checkers."""

    def __init__(self, tasks: Sequence[InstructionTask]) -> None:
        self.tasks = {task.prompt: task for task in tasks}

    @classmethod
    def read(cls, path: str | Path) -> TaskBook:
        """From a JSONL file of IFEval rows with a "stem" (what `write` wrote)."""
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        return cls(
            [InstructionTask(r["stem"], r["prompt"], tuple(r["instruction_id_list"]), tuple(r["kwargs"])) for r in rows]
        )

    def rows(self) -> list[dict]:
        return [{"stem": task.stem, **task.row()} for task in self.tasks.values()]

    def task(self, prompt: str) -> InstructionTask:
        if prompt not in self.tasks:
            raise LoraRlhfError(f"the IFEval-style judge knows no generated prompt {prompt[:80]!r}")
        return self.tasks[prompt]

    def gold_scores(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Gold scores of aligned (prompt text, response) lists."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return [gold_score(self.task(p), r) for p, r in zip(prompts, responses)]
