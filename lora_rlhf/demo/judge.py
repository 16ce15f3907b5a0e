"""The demo's gold judge: a graded score in [0, 1] for a response to a generated task.

Graded, not 0/1, so that ranking K samples carries signal even when none is fully right (InstructGPT's
labelers ranked K = 4..9 outputs by overall quality, §3.4). A response scores

    score = content * (CONTENT_WEIGHT + (1 - CONTENT_WEIGHT) * brevity),    and 1.0 if it equals the answer,

where `content` is the family's partial credit (list positions, word-sequence similarity, numeric
closeness, JSON keys and values) and `brevity` rewards obeying "Reply with ... only".
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence

from lora_rlhf.demo.tasks import Task, parse_task
from lora_rlhf.errors import LoraRlhfError

# Share of the content credit kept however long the reply; the rest rewards a bare answer with no chatter.
CONTENT_WEIGHT = 0.8


def _norm(text: str) -> str:
    return " ".join(text.strip().split())


_NUMBER_WORDS = {
    w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve".split())
} | {"once": 1, "twice": 2, "thrice": 3}
_NUMBER = re.compile(r"-?\d+|\b(?:" + "|".join(_NUMBER_WORDS) + r")\b", flags=re.IGNORECASE)


def _ints(text: str) -> list[int]:
    """Integers in order of appearance, small number words included ("twice" -> 2)."""
    return [int(x) if x[-1].isdigit() else _NUMBER_WORDS[x.lower()] for x in _NUMBER.findall(text)]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _sort_content(task: Task, response: str) -> float:
    """Half for holding the right numbers (multiset F1), half for each number in its sorted place."""
    want, got = sorted(task.params["numbers"]), _ints(response)
    if not got:
        return 0.0
    overlap = sum((Counter(want) & Counter(got)).values())
    f1 = 2 * overlap / (len(want) + len(got))
    placed = sum(a == b for a, b in zip(want, got)) / max(len(want), len(got))
    return 0.5 * f1 + 0.5 * placed


def _reverse_content(task: Task, response: str) -> float:
    """Order-aware similarity of the word sequences (difflib ratio = 2 * matches / total length)."""
    return difflib.SequenceMatcher(a=task.answer.split(), b=_words(response), autojunk=False).ratio()


def _number_content(task: Task, response: str) -> float:
    """Closeness of the last number in the response: 1 when exact, linearly 0 at |error| >= scale."""
    got = _ints(response)
    if not got:
        return 0.0
    want = int(task.answer)
    scale = max(3.0, 0.25 * abs(want))
    return max(0.0, 1.0 - abs(got[-1] - want) / scale)


def _case_content(task: Task, response: str) -> float:
    """Half for the right word sequence (case-blind), half for the same words in the asked-for case."""
    got = re.findall(r"[A-Za-z]+", response)
    want = task.answer.split()
    words = difflib.SequenceMatcher(a=[w.lower() for w in want], b=[w.lower() for w in got], autojunk=False)
    exact = difflib.SequenceMatcher(a=want, b=got, autojunk=False)
    return 0.5 * words.ratio() + 0.5 * exact.ratio()


def _dashes_content(task: Task, response: str) -> float:
    """Half for the right word sequence, half for the words joined by dashes (the dash-separated items)."""
    want = task.params["words"]
    words = difflib.SequenceMatcher(a=want, b=_words(response), autojunk=False)
    items = [item.strip().lower() for item in response.strip().split("-")]
    joined = difflib.SequenceMatcher(a=want, b=items, autojunk=False)
    return 0.5 * words.ratio() + 0.5 * joined.ratio()


def _repeat_content(task: Task, response: str) -> float:
    """The word repeated: credit for each right copy, less for missing or extra copies (multiset F1)."""
    got = _words(response)
    want = [task.params["word"]] * task.params["times"]
    if not got:
        return 0.0
    overlap = sum((Counter(want) & Counter(got)).values())
    return 2 * overlap / (len(want) + len(got))


def _json_content(task: Task, response: str) -> float:
    """0.2 for a parseable object, 0.4 for its keys (extra keys count against), 0.4 for the values."""
    want: dict[str, str] = task.params["pairs"]
    match = re.search(r"\{.*?\}", response, flags=re.DOTALL)
    try:
        obj = json.loads(match.group(0)) if match else None
    except json.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict):
        mentioned = sum(f'"{key}"' in response for key in want) / len(want)
        return 0.2 * mentioned
    keys = sum(key in obj for key in want) / max(len(want), len(obj))
    values = sum(str(obj.get(key)) == value for key, value in want.items()) / len(want)
    return 0.2 + 0.4 * keys + 0.4 * values


_CONTENT: dict[str, Callable[[Task, str], float]] = {
    "sort": _sort_content,
    "reverse": _reverse_content,
    "arithmetic": _number_content,
    "count": _number_content,
    "uppercase": _case_content,
    "lowercase": _case_content,
    "capitalize": _case_content,
    "dashes": _dashes_content,
    "repeat": _repeat_content,
    "json": _json_content,
}


def brevity(answer: str, response: str) -> float:
    """1 when the response is no longer than the answer (+4 chars of slack), falling as 1/length beyond."""
    return min(1.0, (len(answer) + 4) / max(1, len(response.strip())))


def score_task(task: Task, response: str) -> float:
    """The gold score of `response` to `task`, in [0, 1]."""
    if not response.strip():
        return 0.0
    if _norm(response) == _norm(task.answer):
        return 1.0
    content = _CONTENT[task.family](task, response)
    # Brevity scales the content credit, so a short but empty reply ("I can't") still earns nothing.
    score = content * (CONTENT_WEIGHT + (1 - CONTENT_WEIGHT) * brevity(task.answer, response))
    # Only an exact answer earns a perfect score (a near-miss keeps strictly below 1).
    return min(score, 0.99) if math.isfinite(score) else 0.0


def gold_score(prompt: str, response: str) -> float:
    """The gold score in [0, 1] of `response` to the demo task whose plain prompt text is `prompt`."""
    task = parse_task(prompt)
    if task is None:
        raise LoraRlhfError(f"the gold judge knows no demo task with the prompt {prompt[:80]!r}")
    return score_task(task, response)


def gold_scores(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """`gold_score` over aligned lists."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return [gold_score(p, r) for p, r in zip(prompts, responses)]
