"""IFEval's 541 prompts and its four accuracies (Zhou et al. 2023, arXiv:2311.07911, §3).

- prompt-level strict / loose: the share of prompts whose every instruction is followed;
- instruction-level strict / loose: the share of all instructions followed, over every prompt's instructions.

The prompts ship inside the package (`data/input_data.jsonl`, Apache-2.0, google-research commit 19638399cc9e);
they are a test set: nothing in the toolkit trains on them or picks training prompts by them.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.ifeval.checkers import Verdicts, check
from lora_rlhf.io import parse_json
from lora_rlhf.validation import check_unicode

DATA = Path(__file__).resolve().parent / "data" / "input_data.jsonl"
# The published file's digest (shared/data/ifeval/README.md); a changed copy would change every figure.
DATA_SHA256 = "67ffeee0fcb87c317c5b08a2de85557b4a7e96ada6178aa645b4954fe4b53d49"
ACCURACIES = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")


@dataclasses.dataclass(frozen=True)
class IFEvalPrompt:
    """One benchmark row: the prompt and the checker arguments of each of its instructions."""

    key: int
    prompt: str
    instruction_ids: tuple[str, ...]
    kwargs: tuple[Mapping[str, Any], ...]


def load_prompts(path: str | Path | None = None) -> list[IFEvalPrompt]:
    """IFEval rows from a JSONL file (default: the shipped 541), each checked with a one-line error."""
    path = Path(path) if path is not None else DATA
    if not path.is_file():
        raise LoraRlhfError(f"IFEval prompts {str(path)!r} do not exist")
    rows = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if raw.strip():  # eval.ifeval.path may name any file: a bad line is a one-line error naming it (issue 29)
            rows.append(_row(parse_json(raw, f"IFEval prompts {path}, line {number}"), path, number))
    if not rows:
        raise LoraRlhfError(f"IFEval prompts {path}: no rows")
    return rows


def _row(row: Any, path: Path, number: int) -> IFEvalPrompt:
    where = f"IFEval prompts {path}, line {number}"
    if not isinstance(row, dict):
        raise LoraRlhfError(f"{where}: not a JSON object")
    for key, kind in (("key", int), ("prompt", str), ("instruction_id_list", list), ("kwargs", list)):
        if not isinstance(row.get(key), kind):
            raise LoraRlhfError(f"{where}: {key!r} must be a {kind.__name__}")
    check_unicode(row["prompt"], f"{where}: 'prompt'")  # the tokenizer cannot encode a lone surrogate
    ids, kwargs = row["instruction_id_list"], row["kwargs"]
    if len(ids) != len(kwargs) or not ids:
        raise LoraRlhfError(f"{where}: {len(ids)} instruction ids but {len(kwargs)} kwargs")
    return IFEvalPrompt(row["key"], row["prompt"], tuple(ids), tuple(dict(k or {}) for k in kwargs))


def shipped_data_ok() -> bool:
    """Whether the shipped copy of the prompts is the published file, byte for byte."""
    return hashlib.sha256(DATA.read_bytes()).hexdigest() == DATA_SHA256


def score(prompts: Sequence[IFEvalPrompt], responses: Sequence[str]) -> list[Verdicts]:
    """Strict and loose verdicts of each response on its prompt's instructions."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} IFEval prompts but {len(responses)} responses")
    return [check(p.prompt, p.instruction_ids, p.kwargs, r) for p, r in zip(prompts, responses)]


def prompt_level(verdicts: Sequence[Verdicts], mode: str) -> list[float]:
    """(P,) 1.0 where every instruction of the prompt is followed (mode "strict" or "loose"), else 0.0."""
    return [float(all(getattr(v, mode))) for v in verdicts]


def accuracies(verdicts: Sequence[Verdicts]) -> dict[str, float]:
    """The four IFEval accuracies (prompt/instruction level x strict/loose), in [0, 1]."""
    out = {}
    for mode in ("strict", "loose"):
        out[f"prompt_{mode}"] = sum(prompt_level(verdicts, mode)) / len(verdicts)
        followed = [x for v in verdicts for x in getattr(v, mode)]
        out[f"instruction_{mode}"] = sum(followed) / len(followed)
    return out


def per_instruction(prompts: Sequence[IFEvalPrompt], verdicts: Sequence[Verdicts]) -> dict[str, dict[str, float]]:
    """instruction id -> {"count", "strict", "loose"}: how often that instruction is followed where asked."""
    tally: dict[str, list[int]] = {}
    for prompt, verdict in zip(prompts, verdicts):
        for instruction_id, strict, loose in zip(prompt.instruction_ids, verdict.strict, verdict.loose):
            counts = tally.setdefault(instruction_id, [0, 0, 0])
            counts[0] += 1
            counts[1] += strict
            counts[2] += loose
    return {
        key: {"count": n, "strict": strict / n, "loose": loose / n} for key, (n, strict, loose) in sorted(tally.items())
    }


def headline(scores: Mapping[str, float], mode: str = "strict") -> float:
    """The model cards' "IFEval" figure: the mean of prompt- and instruction-level accuracy.

    SmolLM2's card (29.9 for the 135M instruct model) gives "average prompt/inst"; the Open LLM Leaderboard
    averages the strict ones, which is the default here.
    """
    return (scores[f"prompt_{mode}"] + scores[f"instruction_{mode}"]) / 2
