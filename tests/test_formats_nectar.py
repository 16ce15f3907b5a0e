"""Nectar rows read as K-way rankings: per-answer ranks (1 = best), the prompt's transcript as messages (issue 28).

`fixtures/nectar.jsonl` is hand-made after berkeley-nest/Nectar's schema (ranks stored as floats, as in its
Parquet file; fewer than its 7 answers per prompt).
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import pytest

from lora_rlhf.data.rankings import parse_ranking
from lora_rlhf.data.rows import parse_rows
from lora_rlhf.data.sources import DatasetSpec, load_rows
from lora_rlhf.errors import LoraRlhfError

FIXTURE = Path(__file__).parent / "fixtures" / "nectar.jsonl"


def rows_of(path: Path = FIXTURE) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "nectar.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_answers_ranked_one_best_become_rankings_with_the_transcript_as_messages(caplog):
    with caplog.at_level(logging.INFO, logger="lora_rlhf.data.formats"):
        rows = load_rows(DatasetSpec(path=str(FIXTURE)))
    assert "read as nectar rows (detected" in caplog.text
    assert list(rows) == [
        {
            "prompt": [{"role": "user", "content": "Name a primary colour."}],
            "responses": [
                "Blue is a primary colour.",
                "Red.",
                "Green, in light; in paint the primaries are red, yellow and blue.",
                "Colours are nice.",
            ],
            "ranks": [1, 0, 3, 2],
        },
        {
            "prompt": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "tell me a joke"},
            ],
            "responses": ["Why did the chicken cross the road? To get to the other side.", "No.", "I am a joke."],
            "ranks": [0, 2, 1],
        },
    ]
    assert rows.places == ["line 1 (ranks from answers[*].rank)", "line 2 (ranks from answers[*].rank)"]
    kept, _ = parse_rows(rows, functools.partial(parse_ranking, ties="error"), str(FIXTURE), "error")
    assert [k.ranks for k in kept] == [[1, 0, 3, 2], [0, 2, 1]]


def test_equal_ranks_are_ties_and_a_plain_prompt_is_the_users_words(tmp_path):
    rows = rows_of()
    rows[0]["answers"][3]["rank"] = 2  # ties "Blue ..." (2.0)
    rows[1]["prompt"] = "Tell me a joke."
    loaded = load_rows(DatasetSpec(path=str(write(tmp_path, rows)), format="nectar"))
    assert loaded[0]["ranks"] == [1, 0, 2, 1] and loaded[1]["prompt"] == "Tell me a joke."
    with pytest.raises(
        LoraRlhfError, match=r"line 1 \(ranks from answers\[\*\]\.rank\): field 'ranks' \[1, 0, 2, 1\] has ties"
    ):
        parse_rows(loaded, functools.partial(parse_ranking, ties="error"), "n", "error")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda row: row["answers"][1].pop("rank"), r"missing field 'answers\[1\]\.rank'"),
        (
            lambda row: row["answers"][2].update(rank="first"),
            r"field 'answers\[2\]\.rank' is 'first', expected a number or null",
        ),
        (lambda row: row["answers"][0].update(answer=""), r"field 'answers\[0\]\.answer' is empty"),
        (
            lambda row: row.update(answers=row["answers"][:1]),
            r"field 'answers' has 1 answer\(s\); a ranking needs at least 2",
        ),
        (lambda row: row["answers"].append("Red."), r"field 'answers\[3\]' is str, expected an object"),
        (
            lambda row: row.update(prompt="\n\nHuman: hi\n\nAssistant: hello"),
            r"field 'prompt' is not a .* transcript ending with the user's turn",
        ),
    ],
)
def test_a_malformed_row_is_a_one_line_error_naming_its_line_and_field(tmp_path, edit, message):
    rows = rows_of()
    edit(rows[1])
    spec = DatasetSpec(path=str(write(tmp_path, rows)))
    parse = functools.partial(parse_ranking, ties="error")
    with pytest.raises(LoraRlhfError, match=rf"nectar\.jsonl, line 2: {message}$"):
        parse_rows(load_rows(spec), parse, spec.path, "error")
    kept, report = parse_rows(load_rows(spec), parse, spec.path, "skip")
    assert len(kept) == 1 and report.dropped == 1
