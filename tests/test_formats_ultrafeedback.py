"""UltraFeedback rows read as K-way rankings: scores -> ranks, ties left to rm.ties, "N/A" ratings (issue 28).

`fixtures/ultrafeedback.jsonl` is hand-made after openbmb/UltraFeedback's schema (two instructions, four
completions each, with overall_score, fine-grained_score and the four aspects' string ratings).
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import pytest

from lora_rlhf.data.formats.options import UltraFeedbackOptions
from lora_rlhf.data.rankings import parse_ranking
from lora_rlhf.data.rows import parse_rows
from lora_rlhf.data.sources import DatasetSpec, load_rows
from lora_rlhf.errors import LoraRlhfError

FIXTURE = Path(__file__).parent / "fixtures" / "ultrafeedback.jsonl"
COLOURS = [
    "Red, yellow and blue.",
    "The traditional primary colours are red, yellow and blue.",
    "Red, blue, and maybe green.",
    "Purple, orange, brown.",
]
SPIDER = ["A spider has eight legs.", "Spiders have 8 legs, unlike insects, which have 6.", "Six.", "I am not sure."]


def read(score: str = "overall_score", path: Path = FIXTURE, fmt: str = "ultrafeedback"):
    return load_rows(DatasetSpec(path=str(path), format=fmt, ultrafeedback=UltraFeedbackOptions(score=score)))


def test_overall_scores_become_dense_ranks_with_ties(caplog):
    with caplog.at_level(logging.INFO, logger="lora_rlhf.data.formats"):
        rows = read(fmt="auto")
    assert "read as ultrafeedback rows (detected" in caplog.text
    # overall_score 7, 9, 7, 3 -> 1, 0, 1, 2 (a tie); 8.5, 6, 4, 5 -> 0, 1, 3, 2
    assert list(rows) == [
        {"prompt": "Name three primary colours.", "responses": COLOURS, "ranks": [1, 0, 1, 2]},
        {"prompt": "How many legs does a spider have?", "responses": SPIDER, "ranks": [0, 1, 3, 2]},
    ]
    assert rows.places == ["line 1 (ranks from 'overall_score')", "line 2 (ranks from 'overall_score')"]


def test_the_tie_policy_decides_about_equal_scores():
    rows = read()
    strict = functools.partial(parse_ranking, ties="error")
    with pytest.raises(
        LoraRlhfError, match=r"line 1 \(ranks from 'overall_score'\): field 'ranks' \[1, 0, 1, 2\] has ties"
    ):
        parse_rows(rows, strict, str(FIXTURE), "error")
    kept, report = parse_rows(rows, functools.partial(parse_ranking, ties="skip_pairs"), str(FIXTURE), "error")
    assert [k.ranks for k in kept] == [[1, 0, 1, 2], [0, 1, 3, 2]] and report.dropped == 0


def test_fine_grained_is_the_mean_of_the_rated_aspects_and_na_is_left_out():
    # means 4.0, 5.0, 3.0 (honesty "N/A" left out), 1.5; 4.5, 3.5, 2.0, and the all-"N/A" completion has none
    assert list(read("fine_grained")) == [
        {"prompt": "Name three primary colours.", "responses": COLOURS, "ranks": [1, 0, 2, 3]},
        {"prompt": "How many legs does a spider have?", "responses": SPIDER[:3], "ranks": [0, 1, 2]},
    ]
    # one aspect: helpfulness 4, 5, 3, 1; 5, 3, 2, "N/A"
    assert [r["ranks"] for r in read("helpfulness")] == [[1, 0, 2, 3], [0, 1, 2]]


def test_a_row_with_fewer_than_two_scored_completions_gives_no_ranking(tmp_path, caplog):
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    for completion in rows[1]["completions"][1:]:
        completion["overall_score"] = None
    path = tmp_path / "uf.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with caplog.at_level(logging.INFO, logger="lora_rlhf.data.formats"):
        assert len(read(path=path)) == 1
    assert (
        "3 completions without a score" in caplog.text and "1 rows with fewer than 2 scored completions" in caplog.text
    )


@pytest.mark.parametrize(
    ("score", "edit", "message"),
    [
        (
            "overall_score",
            lambda row: row["completions"][2].update(overall_score="high"),
            r"field 'completions\[2\]\.overall_score' is 'high', expected a number or null",
        ),
        (
            "fine_grained",
            lambda row: row["completions"][1]["annotations"]["honesty"].update(Rating="five"),
            r"field 'completions\[1\]\.annotations\.honesty\.Rating' is 'five', expected a rating or 'N/A'",
        ),
        (
            "fine_grained",
            lambda row: row["completions"][0]["annotations"].pop("truthfulness"),
            r"missing field 'completions\[0\]\.annotations\.truthfulness'",
        ),
        (
            "overall_score",
            lambda row: row["completions"][3].update(response=7),
            r"field 'completions\[3\]\.response' is int, expected a string",
        ),
        ("overall_score", lambda row: row.update(completions="none"), r"field 'completions' is str, expected a list"),
        ("overall_score", lambda row: row.pop("instruction"), r"missing field 'instruction'"),
    ],
)
def test_a_malformed_row_is_a_one_line_error_naming_its_line_and_field(tmp_path, score, edit, message):
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    edit(rows[1])
    path = tmp_path / "uf.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    parse = functools.partial(parse_ranking, ties="skip_pairs")
    with pytest.raises(LoraRlhfError, match=rf"uf\.jsonl, line 2: {message}$"):
        parse_rows(read(score, path, "auto"), parse, str(path), "error")
    kept, report = parse_rows(read(score, path, "auto"), parse, str(path), "skip")
    assert len(kept) == 1 and report.dropped == 1
