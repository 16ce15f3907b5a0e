"""Nectar rows -> K-way rankings: the ranked answers of one prompt.

Schema: berkeley-nest/Nectar (Hugging Face dataset card): `{prompt, answers: [{answer, model, rank}], turns,
num_responses, source, good_natured}`, where `prompt` is an Anthropic-style transcript ("\\n\\nHuman: ...
\\n\\nAssistant: ") and `rank` runs from 1 (best) to num_responses (stored as a float in the Parquet file).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from lora_rlhf.data.chat import hh_messages
from lora_rlhf.data.formats.common import Item, dense_ranks, items_list, number, obj, text
from lora_rlhf.data.rows import BadRow


def read(rows: Sequence[Mapping[str, Any]], options: None, stats: Counter) -> Iterator[Item]:
    for index, row in enumerate(rows):
        try:
            yield index, "ranks from answers[*].rank", ranking_of(row)
        except BadRow as exc:
            yield index, "", exc


def ranking_of(row: Mapping[str, Any]) -> dict[str, Any]:
    responses, values = [], []
    for i, answer in enumerate(items_list(row, "answers", "answers")):
        answer = obj(answer, f"answers[{i}]")
        rank = number(answer.get("rank"), f"answers[{i}].rank")
        if rank is None:
            raise BadRow(f"missing field 'answers[{i}].rank'")
        responses.append(text(answer, "answer", f"answers[{i}].answer"))
        values.append(rank)
    if len(responses) < 2:
        raise BadRow(f"field 'answers' has {len(responses)} answer(s); a ranking needs at least 2")
    return {
        "prompt": _prompt(text(row, "prompt", "prompt")),
        "responses": responses,
        "ranks": dense_ranks(values, higher_is_better=False),
    }


def _prompt(transcript: str) -> str | list[dict[str, str]]:
    """The transcript as chat messages; a prompt without "Human:" turns is taken as the user's words."""
    if "Human:" not in transcript:
        return transcript
    messages = hh_messages(transcript)
    if isinstance(messages, str):
        raise BadRow(
            "field 'prompt' is not a '\\n\\nHuman: ... \\n\\nAssistant:' transcript ending with the user's turn"
        )
    return messages
