"""Open Assistant trees (one per JSON line) and the flat message table (Parquet) read as K-way rankings (issue 28).

The fixture `fixtures/oasst_trees.jsonl` is hand-made after the oasst1/oasst2 dataset cards; the flat table is
the same messages, one per row, in the columns of the Hugging Face Parquet release.
"""

from __future__ import annotations

import functools
import json
import logging
import random
from pathlib import Path

import pytest

from lora_rlhf.data.formats.options import OasstOptions
from lora_rlhf.data.rankings import parse_ranking
from lora_rlhf.data.rows import parse_rows
from lora_rlhf.data.sources import DatasetSpec, load_rows
from lora_rlhf.errors import LoraRlhfError

TREES = Path(__file__).parent / "fixtures" / "oasst_trees.jsonl"
FRANCE = {"role": "user", "content": "What is the capital of France?"}
ITALY = [
    FRANCE,
    {"role": "assistant", "content": "Paris is the capital of France."},
    {"role": "user", "content": "And of Italy?"},
]
GERMAN = [{"role": "user", "content": "Wie spät ist es?"}]
# Every ranking the fixture gives by default, worked out by hand: deleted (t1-a5), unranked (t1-a6) and
# failed-review (t2-a3) replies are left out, and t3's prompter turn has a single reply.
EXPECTED = [
    {
        "prompt": [FRANCE],
        "responses": ["Paris is the capital of France.", "The capital of France is Paris, on the Seine."],
        "ranks": [1, 0],
    },
    {"prompt": ITALY, "responses": ["Rome.", "Milan."], "ranks": [0, 1]},
    {
        "prompt": GERMAN,
        "responses": ["Ich weiß es nicht.", "Ich kann die Uhrzeit nicht sehen, schau bitte auf deine Uhr."],
        "ranks": [1, 0],
    },
]


def trees() -> list[dict]:
    return [json.loads(line) for line in TREES.read_text().splitlines()]


def flatten(tree: dict) -> list[dict]:
    """One tree -> its messages as rows of the HF Parquet release (emojis and labels as lists of structs)."""
    rows, stack = [], [tree["prompt"]]
    while stack:
        message = dict(stack.pop())
        stack.extend(reversed(message.pop("replies")))
        message["emojis"] = [{"name": k, "count": v} for k, v in message["emojis"].items()]
        message["labels"] = [{"name": k, **v} for k, v in message["labels"].items()]
        rows.append({**message, "message_tree_id": tree["message_tree_id"], "tree_state": tree["tree_state"]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def write_parquet(path: Path, rows: list[dict]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def read(path: str, fmt: str = "auto", **options) -> list:
    return list(load_rows(DatasetSpec(path=path, format=fmt, oasst=OasstOptions(**options))))


def as_sets(rankings: list[dict]) -> list:
    """Rankings without sibling order: (prompt, {response: rank}), sorted."""
    return sorted((json.dumps(r["prompt"]), sorted(zip(r["responses"], r["ranks"]))) for r in rankings)


def test_every_ranked_prompter_turn_is_one_ranking_with_its_history(caplog):
    with caplog.at_level(logging.INFO, logger="lora_rlhf.data.formats"):
        rows = load_rows(DatasetSpec(path=str(TREES)))
    assert list(rows) == EXPECTED
    assert rows.places == [
        "line 1 (replies to message 't1-p1')",
        "line 1 (replies to message 't1-p2')",
        "line 2 (replies to message 't2-p1')",
    ]
    assert "read as oasst_trees rows (detected" in caplog.text
    assert "3 rankings from 3 oasst_trees rows" in caplog.text and "1 deleted messages" in caplog.text


def test_the_flat_parquet_table_assembles_the_same_trees_in_any_row_order(tmp_path):
    messages = [row for tree in trees() for row in flatten(tree)]
    assert read(write_parquet(tmp_path / "m.parquet", messages)) == EXPECTED  # detected as oasst_messages
    random.Random(0).shuffle(messages)  # replies before their parents, trees interleaved
    shuffled = read(write_parquet(tmp_path / "s.parquet", messages), "oasst_messages")
    assert as_sets(shuffled) == as_sets(EXPECTED)
    places = load_rows(DatasetSpec(path=str(tmp_path / "s.parquet"))).places
    parent = {m["message_id"]: i for i, m in enumerate(messages)}["t1-p2"]
    assert f"row {parent} (replies to message 't1-p2')" in places  # the prompter message's row


def test_language_deleted_review_and_unranked_filters():
    assert read(str(TREES), lang=["de"]) == [EXPECTED[2]]
    assert read(str(TREES), lang=["en", "fr"]) == EXPECTED[:2]
    with_deleted = read(str(TREES), deleted=True)[0]
    assert with_deleted["responses"][-1] == "I do not know." and with_deleted["ranks"] == [1, 0, 2]
    assert read(str(TREES), failed_review=True)[2]["ranks"] == [1, 0, 2]
    last = read(str(TREES), unranked="last")[0]
    assert last["responses"] == [EXPECTED[0]["responses"][0], EXPECTED[0]["responses"][1], "paris"]
    assert last["ranks"] == [1, 0, 2]  # ranks stay dense where the deleted rank-2 reply was left out


def test_a_left_out_message_takes_its_subtree_along(tmp_path):
    tree = trees()[0]
    tree["prompt"]["replies"][0]["deleted"] = True  # t1-a1: the Italy turn below it goes too
    expected = [{"prompt": [FRANCE], "responses": [EXPECTED[0]["responses"][1], "paris"], "ranks": [0, 1]}]
    assert read(write_jsonl(tmp_path / "t.jsonl", [tree]), unranked="last") == expected
    assert read(write_parquet(tmp_path / "m.parquet", flatten(tree)), unranked="last") == expected


def test_a_config_section_selects_the_format_and_filters():
    from lora_rlhf.config.loader import build, parse_overrides
    from lora_rlhf.rm.config import RMConfig

    overrides = parse_overrides(["data.path=x.jsonl", "data.format=oasst_messages", "data.oasst.lang=[en]"])
    config = build(RMConfig, overrides)
    assert config.data.format == "oasst_messages" and config.data.oasst.lang == ["en"]
    with pytest.raises(LoraRlhfError, match=r"data\.format: 'oasst' is not one of auto, rankings, oasst_trees"):
        build(RMConfig, {"data": {"format": "oasst"}})
    with pytest.raises(LoraRlhfError, match=r"data\.oasst\.lang: \[\] keeps no message"):
        build(RMConfig, {"data": {"oasst": {"lang": []}}})


def _tree_with(path: list, key: str, value) -> dict:
    tree = trees()[0]
    node = tree["prompt"]
    for i in path:
        node = node["replies"][i]
    node[key] = value
    return tree


@pytest.mark.parametrize(
    ("path", "key", "value", "message"),
    [
        ([1], "rank", "first", r"field 'prompt\.replies\[1\]\.rank' is 'first', expected a number or null"),
        (
            [0, 0],
            "role",
            "user",
            r"field 'prompt\.replies\[0\]\.replies\[0\]\.role' is 'user', expected 'prompter' or 'assistant'",
        ),
        ([0, 0, 1], "text", "", r"field 'prompt\.replies\[0\]\.replies\[0\]\.replies\[1\]\.text' is empty"),
        ([0], "replies", {"a": 1}, r"field 'prompt\.replies\[0\]\.replies' is dict, expected a list"),
        ([], "role", "assistant", r"field 'prompt\.role' is 'assistant' in a root message"),
        ([1], "role", "prompter", r"field 'prompt\.replies\[1\]\.role' is 'prompter', the same as its parent's"),
        ([2], "deleted", "yes", r"field 'prompt\.replies\[2\]\.deleted' is 'yes', expected true, false or null"),
    ],
)
def test_a_malformed_tree_is_a_one_line_error_naming_its_line_and_field(tmp_path, path, key, value, message):
    rows = [trees()[1], _tree_with(path, key, value)]
    spec = DatasetSpec(path=write_jsonl(tmp_path / "bad.jsonl", rows), format="oasst_trees")
    parse = functools.partial(parse_ranking, ties="error")
    with pytest.raises(LoraRlhfError, match=rf"^{tmp_path}/bad\.jsonl, line 2: {message}") as caught:
        parse_rows(load_rows(spec), parse, spec.path, "error")
    assert "\n" not in str(caught.value)
    kept, report = parse_rows(load_rows(spec), parse, spec.path, "skip")
    assert len(kept) == 1 and report.dropped == 1  # the bad tree is one skipped row


def test_a_malformed_message_row_names_its_row_and_field(tmp_path):
    messages = flatten(trees()[0])
    messages[3]["rank"] = "2"  # t1-a3, "Rome."
    messages.append(dict(messages[1]))  # a repeated message id
    spec = DatasetSpec(path=write_jsonl(tmp_path / "m.jsonl", messages), format="oasst_messages")
    parse = functools.partial(parse_ranking, ties="error")
    with pytest.raises(LoraRlhfError, match=r"m\.jsonl, line 4: field 'rank' is '2', expected a number or null"):
        parse_rows(load_rows(spec), parse, spec.path, "error")
    kept, report = parse_rows(load_rows(spec), parse, spec.path, "skip")
    assert report.dropped == 2 and set(report.skipped) == {
        "field 'rank' is '2', expected a number or null",
        "field 'message_id' 't1-a1' repeats an earlier row's",
    }
    assert kept == [parse(EXPECTED[0])]  # line 4 was "Rome.": the Italy turn has one ranked reply left


def test_no_ranking_at_all_is_a_one_line_error(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [trees()[2]])  # one reply: nothing to rank
    with pytest.raises(LoraRlhfError, match=r"its oasst_trees rows give no ranking"):
        load_rows(DatasetSpec(path=path))
