"""lora_rlhf.io.parse_json: the one JSON reader with one-line errors (issue 26), in the wording each caller gives."""

from __future__ import annotations

import pytest

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.io import JsonWording, parse_json


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"a": "caf\xe9"}', "f.jsonl, line 2: byte 10 is not UTF-8"),
        (b'{"a": 1,}', "f.jsonl, line 2: not valid JSON (Expecting property name enclosed in double quotes, column 9)"),
        (b"[" * 200_000 + b"]" * 200_000, "f.jsonl, line 2: nests arrays or objects too deeply to read as a row"),
    ],
)
def test_each_failure_is_one_line_naming_where(data, expected):
    with pytest.raises(LoraRlhfError) as info:
        parse_json(data, "f.jsonl, line 2")
    assert str(info.value) == expected


def test_a_wording_gets_the_bad_byte_the_line_json_stopped_on_and_its_start():
    wording = JsonWording(
        not_utf8="{where}: {byte!r} at column {column}",
        not_json="{where}, line {line}: {snippet} ({msg}, column {column})",
        too_deep="{where}: {snippet} too deep",
    )
    with pytest.raises(LoraRlhfError, match=r"^f\.json: b'\\xff' at column 3$"):
        parse_json(b"[ \xff]", "f.json", wording)
    with pytest.raises(LoraRlhfError, match=r"^f\.json, line 3: '\{\"b\": oops\}' \(Expecting value, column 7\)$"):
        parse_json(b'[\n{"a": 1},\n{"b": oops}\n]', "f.json", wording)
    with pytest.raises(LoraRlhfError, match=r"^f\.json: '\[\[\[.*\.\.\.' too deep$"):
        parse_json("[" * 200_000 + "]" * 200_000, "f.json", wording)  # text is parsed as it is
    assert parse_json(b'\xef\xbb\xbf{"a": 1}', "f.json", encoding="utf-8-sig") == {"a": 1}
