"""The IFEval-style task's data, made in the run directory (recipes/ifeval.yaml; `demo.task: ifeval`).

Prompts are a task stem of our own and 1-3 of IFEval's instructions with fresh arguments (ifeval/tasks.py);
every prompt of every split is kept in data/ifeval_tasks.jsonl so the gold judge (IFEval's checkers, graded:
ifeval/judge.py) can find a prompt's instructions from its text. Demonstrations are written by code: the
base model's own greedy answer to the stem alone, repaired to satisfy each instruction (ifeval/repair.py);
a demonstration that a repair cannot make pass every instruction is not written. Nothing here reads IFEval's
541 prompts: the stems are held apart from them by a test (tests/test_ifeval_tasks.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from lora_rlhf.config.recipe import DemoConfig
from lora_rlhf.data.chat import render_prompt, user_turn
from lora_rlhf.demo.datasets import write_jsonl
from lora_rlhf.eval.responses import generate_responses
from lora_rlhf.ifeval.checkers import check
from lora_rlhf.ifeval.judge import TaskBook
from lora_rlhf.ifeval.repair import repair
from lora_rlhf.ifeval.tasks import InstructionTask, sample_tasks
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.pipeline.run_dir import RunDir

logger = logging.getLogger(__name__)

TASKS_FILE = "ifeval_tasks.jsonl"
# Train splits draw from train stems, the held-out ones from eval stems (ifeval/tasks.split_of).
_SPLITS = {
    "demonstrations": ("train", 0),
    "ranking_prompts": ("train", 1),
    "prompts": ("train", 2),
    "eval_prompts": ("eval", 3),
    "eval_ranking_prompts": ("eval", 4),
}
# Demonstration tasks drawn per demonstration wanted: some cannot be repaired to pass every instruction.
_DRAW_FACTOR = 2
# Base answers to stems per decoding call.
_BATCH = 64
# Base answers sampled per stem, and their temperature (demonstrations: base_answers).
_ANSWERS_PER_STEM = 4
_ANSWER_TEMPERATURE = 0.7


def draw_tasks(demo: DemoConfig) -> dict[str, list[InstructionTask]]:
    """The tasks of every split, no prompt in two splits (the demonstrations' split drawn with spare tasks)."""
    counts = {
        "demonstrations": demo.demonstrations * _DRAW_FACTOR,
        "ranking_prompts": demo.ranking_prompts,
        "prompts": demo.ppo_prompts,
        "eval_prompts": demo.eval_prompts,
        "eval_ranking_prompts": demo.eval_ranking_prompts,
    }
    seen: set[str] = set()
    out = {}
    for split, count in counts.items():
        part, offset = _SPLITS[split]
        drawn = sample_tasks(
            count * 2,
            demo.seed * 101 + offset,
            split=part,
            instructions=demo.ifeval_instructions,
            max_instructions=demo.max_instructions,
        )
        out[split] = [t for t in drawn if t.prompt not in seen][:count]
        seen.update(t.prompt for t in out[split])
    return out


def write_task_data(demo: DemoConfig, run: RunDir, stack: RoleStack, files: dict[str, str], as_prompt) -> None:
    """Write the task book, the demonstrations and every split's prompts (once; later calls find them)."""
    if all(run.data(files[split]).exists() for split in _SPLITS) and run.data(TASKS_FILE).exists():
        return
    tasks = draw_tasks(demo)
    write_jsonl(run.data(TASKS_FILE), TaskBook([t for split in tasks.values() for t in split]).rows())
    for split, chosen in tasks.items():
        target = run.data(files[split])
        if target.exists():
            continue
        if split == "demonstrations":
            rows = demonstration_rows(stack, chosen, demo, as_prompt)
        else:
            rows = [{"prompt": as_prompt(t.prompt, demo.system_prompt)} for t in chosen]
        write_jsonl(target, rows)
        logger.info("ifeval task: wrote %d rows to %s", len(rows), target)


def demonstration_rows(stack: RoleStack, tasks: Sequence[InstructionTask], demo: DemoConfig, as_prompt) -> list[dict]:
    """Up to demo.demonstrations {"prompt", "completion"} rows: one of the base's answers to the stem, repaired.

    A task takes its stem's usable answers in turn (the i-th task of a stem its i-th answer, cycling), so the
    same words are not taught several times over; a stem with no usable answer gives no demonstration.
    """
    answers = base_answers(stack, sorted({t.stem for t in tasks}), demo)
    rows, used = [], dict.fromkeys(answers, 0)
    for task in tasks:
        if not answers[task.stem]:
            continue
        answer = answers[task.stem][used[task.stem] % len(answers[task.stem])]
        used[task.stem] += 1
        text = repair(answer, task.instruction_ids, task.kwargs, task.prompt)
        if all(check(task.prompt, task.instruction_ids, task.kwargs, text).strict):
            rows.append({"prompt": as_prompt(task.prompt, demo.system_prompt), "completion": text})
        if len(rows) == demo.demonstrations:
            break
    logger.info("ifeval task: %d of %d repaired answers follow every instruction", len(rows), len(tasks))
    return rows


def base_answers(stack: RoleStack, stems: Sequence[str], demo: DemoConfig) -> dict[str, list[str]]:
    """The bare base model's usable answers to each stem (no instruction), the raw material of demonstrations.

    _ANSWERS_PER_STEM samples per stem at _ANSWER_TEMPERATURE. An answer the budget (demo.max_new_tokens) cut
    is ended at its last full sentence (`whole_sentences`); one that repeats itself (`rambles`) is left out.
    The first recipe taught the base's single greedy answer, cut mid-sentence at the budget, to ~1.6 tasks per
    stem: SFT learned to run on and to loop (IFEval answers hitting the budget 287 -> 370 of 541, postscripts
    65 -> 35%; docs/ifeval/report.md). Most answers to a stem run past 160 tokens (238 of 284 measured).
    """
    rendered = [render_prompt(stack.tokenizer, user_turn(s, demo.system_prompt)) for s in stems]
    repeated = [text for text in rendered for _ in range(_ANSWERS_PER_STEM)]
    stops = set(stack.eos_ids())
    with stack.evaluating():
        out = generate_responses(
            stack,
            "base",
            repeated,
            max_new_tokens=demo.max_new_tokens,
            batch_size=_BATCH,
            temperature=_ANSWER_TEMPERATURE,
        )
    answers: dict[str, list[str]] = {stem: [] for stem in stems}
    cut = looping = 0
    for i, text in enumerate(out.texts):
        stem = stems[i // _ANSWERS_PER_STEM]
        if int(out.input_ids[i][-1]) not in stops:
            cut += 1
            text = whole_sentences(text)
        if rambles(text):
            looping += 1
        elif text and text not in answers[stem]:
            answers[stem].append(text)
    logger.info(
        "ifeval task: %d base answers to %d stems, %d cut by the %d-token budget (ended at their last full "
        "sentence), %d repeating themselves (left out), %d kept",
        len(out.texts),
        len(stems),
        cut,
        demo.max_new_tokens,
        looping,
        sum(map(len, answers.values())),
    )
    return answers


_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")


def whole_sentences(text: str) -> str:
    """`text` up to the end of its last full sentence ("" when none ends): an answer cut at the budget, ended."""
    ends = [match.end() for match in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]].rstrip() if ends else ""


def rambles(text: str, n: int = 4, min_distinct: float = 0.9) -> bool:
    """Whether `text` repeats itself: a line said twice, or under `min_distinct` of its word n-grams distinct."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(set(lines)) < len(lines):
        return True
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return bool(grams) and len(set(grams)) < min_distinct * len(grams)


def gold_fn(run: RunDir):
    """IFEval's checkers, graded, on the run's generated prompts: (prompts, responses) -> scores in [0, 1]."""
    return TaskBook.read(run.data(TASKS_FILE)).gold_scores
