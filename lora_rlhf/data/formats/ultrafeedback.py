"""UltraFeedback rows -> K-way rankings: the completions of one instruction ordered by a score.

Schema: openbmb/UltraFeedback (Hugging Face, with the 2023-12-29 fix of `overall_score`): `{source, instruction,
models, completions: [{model, principle, custom_system_prompt, response, annotations, critique, overall_score,
fine-grained_score}], correct_answers, incorrect_answers}`, where `annotations` holds the four aspects
(helpfulness, honesty, instruction_following, truthfulness), each `{"Rating": "1".."5" or "N/A", "Rationale",
...}`. Equal scores are tied ranks, which rm.ties decides about; the prompt is the instruction alone (the
`custom_system_prompt` steered the model that wrote a completion, it is not part of what the user asked).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from lora_rlhf.data.formats.common import Item, dense_ranks, items_list, kind, number, obj, text
from lora_rlhf.data.formats.options import ASPECTS, UltraFeedbackOptions
from lora_rlhf.data.rows import BadRow


def read(rows: Sequence[Mapping[str, Any]], options: UltraFeedbackOptions, stats: Counter) -> Iterator[Item]:
    for index, row in enumerate(rows):
        try:
            ranking = ranking_of(row, options.score, stats)
        except BadRow as exc:
            yield index, "", exc
            continue
        if ranking is not None:
            yield index, f"ranks from {_source(options.score)}", ranking


def ranking_of(row: Mapping[str, Any], score: str, stats: Counter) -> dict[str, Any] | None:
    """The row's ranking, or None when fewer than two completions have a score (counted in `stats`)."""
    instruction = text(row, "instruction", "instruction")
    responses, values = [], []
    for i, completion in enumerate(items_list(row, "completions", "completions")):
        field = f"completions[{i}]"
        completion = obj(completion, field)
        value = _score(completion, score, field)
        if value is None:
            stats["completions without a score"] += 1
            continue
        responses.append(text(completion, "response", f"{field}.response"))
        values.append(value)
    if len(responses) < 2:
        stats["rows with fewer than 2 scored completions"] += 1
        return None
    return {"prompt": instruction, "responses": responses, "ranks": dense_ranks(values, higher_is_better=True)}


def _score(completion: Mapping[str, Any], score: str, field: str) -> float | None:
    if score == "overall_score":
        return number(completion.get("overall_score"), f"{field}.overall_score")
    annotations = obj(completion.get("annotations"), f"{field}.annotations")
    if score != "fine_grained":
        return _rating(annotations, score, f"{field}.annotations")
    ratings = [_rating(annotations, aspect, f"{field}.annotations") for aspect in ASPECTS]
    rated = [rating for rating in ratings if rating is not None]
    return sum(rated) / len(rated) if rated else None


def _rating(annotations: Mapping[str, Any], aspect: str, field: str) -> float | None:
    """One aspect's 1-5 rating ("N/A" or null: None); UltraFeedback writes ratings as strings."""
    field = f"{field}.{aspect}.Rating"
    value = obj(annotations.get(aspect), field.removesuffix(".Rating")).get("Rating")
    if isinstance(value, str):
        if value.strip().upper() == "N/A":
            return None
        try:
            value = float(value)
        except ValueError:
            raise BadRow(f"field {field!r} is {value!r}, expected a rating or 'N/A'") from None
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise BadRow(f"field {field!r} is {kind(value)}, expected a rating or 'N/A'")
    return number(value, field)


def _source(score: str) -> str:
    return {"overall_score": "'overall_score'", "fine_grained": "the mean aspect rating"}.get(
        score, f"{score!r} ratings"
    )
