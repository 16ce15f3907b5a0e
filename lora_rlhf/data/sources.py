"""Where rows come from: a local JSON / JSONL / Parquet file or a Hub dataset id, via `datasets.load_dataset`."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from lora_rlhf.data import formats
from lora_rlhf.data.formats.options import Format, OasstOptions, UltraFeedbackOptions
from lora_rlhf.data.rows import BadRow
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.io import JsonWording, decode_text, parse_json, snippet
from lora_rlhf.validation import check_positive_ints

_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
# How a bad row reads: `where` names its line ("rows.jsonl, line 3"). A JSON array is one parse of the whole file
# (`where` is the file's name): what JSON rejects names its line, the rest "the file".
_NOT_UTF8 = "byte {byte!r} at column {column} is not UTF-8 (save the file as UTF-8)"
_NOT_JSON = "{snippet} is not valid JSON ({msg}, column {column})"
_TOO_DEEP = "{snippet} nests arrays or objects too deeply to read as a row"
_LINE = JsonWording(f"{{where}}: {_NOT_UTF8}", f"{{where}}: {_NOT_JSON}", f"{{where}}: {_TOO_DEEP}")
_ARRAY = JsonWording(
    f"{{where}}, the file: {_NOT_UTF8}", f"{{where}}, line {{line}}: {_NOT_JSON}", f"{{where}}, the file: {_TOO_DEEP}"
)


@dataclasses.dataclass
class DatasetSpec:
    """One dataset of a stage."""

    # Local .json / .jsonl / .parquet file, or a Hugging Face Hub dataset id.
    path: str = ""
    # Split to read (Hub datasets and local files alike; a local file's only split is "train").
    split: str = "train"
    # Hub dataset configuration name, if the dataset has several.
    name: str | None = None
    # Hub subfolder of data files (e.g. "harmless-base" in Anthropic/hh-rlhf).
    data_dir: str | None = None
    # Use at most this many rows (None: all), taken before the held-out split; for the formats read as rankings
    # (below) it counts the rankings made, not the rows read.
    max_rows: int | None = None
    # Row format: "auto" (detect from the first row, and log the choice), "rankings" (the project's own rows), or
    # a public preference format read as rankings: "oasst_trees", "oasst_messages", "ultrafeedback", "nectar".
    format: Format = "auto"
    # Open Assistant filters (formats oasst_trees and oasst_messages).
    oasst: OasstOptions = dataclasses.field(default_factory=OasstOptions)
    # UltraFeedback's score that orders the completions (format ultrafeedback).
    ultrafeedback: UltraFeedbackOptions = dataclasses.field(default_factory=UltraFeedbackOptions)

    def __post_init__(self) -> None:
        check_positive_ints(self, ("max_rows",), nullable=True)

    def display(self) -> str:
        return self.path if self.split == "train" else f"{self.path}[{self.split}]"


def is_local(path: str) -> bool:
    return Path(os.path.expanduser(path)).suffix.lower() in _BUILDERS or os.path.exists(os.path.expanduser(path))


class LocalRows(list):
    """Rows of a local JSON file, each with where it sits (`line 3`, or `row 3` of a JSON array); also the
    rankings made from a preference format's rows, where a source row that could not be read is its BadRow."""

    def __init__(self, rows: list[dict[str, Any] | BadRow], places: list[str]) -> None:
        super().__init__(rows)
        self.places = places

    def place(self, index: int) -> str:
        return self.places[index]


def load_rows(spec: DatasetSpec):
    """The rows of `spec`: a list of dicts (local JSON / JSONL) or a `datasets.Dataset`; one-line errors.

    Local JSON is read here, line by line, rather than by `datasets`: Arrow types each column from the
    first rows, so one bad row re-types it and the error blames row 0, and a bad byte or a cut line
    comes back as a traceback without a line number (issue 12). Rows of a public preference format come
    back as rankings rows, each naming the row it was made from (`_as_rankings`).
    """
    if not spec.path:
        raise LoraRlhfError("dataset path is empty: give a .json, .jsonl or .parquet file or a Hub dataset id")
    rows = _as_rankings(_read(spec), spec)
    if spec.max_rows is None:
        return rows
    if isinstance(rows, LocalRows):
        return LocalRows(rows[: spec.max_rows], rows.places[: spec.max_rows])
    return rows.select(range(min(spec.max_rows, len(rows))))


def _read(spec: DatasetSpec):
    if is_local(spec.path):
        path = Path(os.path.expanduser(spec.path))
        if path.is_dir():
            raise LoraRlhfError(f"dataset file {spec.path!r} is a directory, not a .json, .jsonl or .parquet file")
        if not path.is_file():
            raise LoraRlhfError(f"dataset file {spec.path!r} does not exist")
        builder = _BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise LoraRlhfError(f"dataset file {spec.path!r}: expected a .json, .jsonl or .parquet file")
        if builder == "json":
            return _select_split(read_json_rows(path, spec.path), spec)
    return _load_dataset(spec)


def _as_rankings(rows, spec: DatasetSpec):
    """Rows of an OASST, UltraFeedback or Nectar spec -> rankings rows, each placed at the row it came from
    (`line 3 (replies to message 'm1')`); a row a reader could not use stays as its BadRow, which `parse_rows`
    reports (or skips) like any bad row. Rows of the rankings format come back as they are."""
    chosen, items = formats.convert(rows, spec.format, spec, spec.display())
    if chosen == "rankings":
        return rows
    place = getattr(rows, "place", lambda index: f"row {index}")
    converted = LocalRows(
        [item for _, _, item in items], [f"{place(i)} ({note})" if note else place(i) for i, note, _ in items]
    )
    if not converted:
        raise LoraRlhfError(
            f"dataset {spec.display()!r}: its {chosen} rows give no ranking (see the log for what was left out)"
        )
    return converted


def read_json_rows(path: Path, shown: str) -> LocalRows:
    """A .jsonl file (or a .json file of JSON lines or one array of objects) as rows naming their line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LoraRlhfError(f"dataset file {shown!r}: {exc.strerror}") from None
    if not data.strip():
        raise LoraRlhfError(f"dataset file {shown!r} is empty: no rows")
    if data.lstrip().startswith(b"["):
        return _json_array(data, shown)
    rows, places = [], []
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        text = decode_text(raw, f"{shown}, line {number}", _LINE, encoding="utf-8-sig")
        row = parse_json(text, f"{shown}, line {number}", _LINE)
        _check_object(row, shown, f"line {number}")
        _check_text(row, shown, f"line {number}", text)
        rows.append(row)
        places.append(f"line {number}")
    if not rows:
        raise LoraRlhfError(f"dataset file {shown!r} has no rows (only blank lines)")
    return LocalRows(rows, places)


def _select_split(rows: LocalRows, spec: DatasetSpec) -> LocalRows:
    """Slice a local file's rows as `datasets` would for `spec.split` ("train", "train[:50%]", ...)."""
    if spec.split == "train":
        return rows
    import datasets

    try:
        parts = datasets.ReadInstruction.from_spec(spec.split).to_absolute({"train": len(rows)})
    except (ValueError, AssertionError) as exc:
        raise LoraRlhfError(f"dataset file {spec.path!r}: split {spec.split!r}: {exc}") from None
    picked = [i for part in parts for i in range(part.from_, part.to)]
    return LocalRows([rows[i] for i in picked], [rows.places[i] for i in picked])


def _json_array(data: bytes, shown: str) -> LocalRows:
    text = decode_text(data, shown, _ARRAY, encoding="utf-8-sig")
    items = parse_json(text, shown, _ARRAY)
    if not items:
        raise LoraRlhfError(f"dataset file {shown!r} has no rows (an empty JSON array)")
    for index, item in enumerate(items):
        _check_object(item, shown, f"row {index}")
        _check_text(item, shown, f"row {index}", text)
    return LocalRows(items, [f"row {index}" for index in range(len(items))])


def _check_object(row: Any, shown: str, where: str) -> None:
    if not isinstance(row, dict):
        value = json.dumps(row)
        value = value if len(value) <= 40 else value[:37] + "..."
        kind = _JSON_KINDS.get(type(row), type(row).__name__)
        raise LoraRlhfError(f"{shown}, {where}: {value} is a JSON {kind}, expected an object of fields")


def _check_text(row: Any, shown: str, where: str, text: str) -> None:
    """JSON may escape a lone UTF-16 surrogate ("\\ud800"), which no tokenizer can encode (issue 29).

    Only a `\\u` escape can make one (the bytes were already decoded as UTF-8), so rows without one are not walked.
    """
    if "\\u" not in text:
        return
    try:
        field = _lone_surrogate(row)
    except RecursionError:  # json.loads stopped just short of the limit, the walk one frame deeper did not
        raise LoraRlhfError(_LINE.too_deep.format(where=f"{shown}, {where}", snippet=snippet(text))) from None
    if field is not None:
        raise LoraRlhfError(
            f"{shown}, {where}: field {field!r} holds a lone UTF-16 surrogate, which is not valid Unicode text"
        )


def _lone_surrogate(value: Any, path: str = "") -> str | None:
    """The path (`messages[0].content`) of the first string holding a lone surrogate, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "(the row)"
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        inner = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)
        found = _lone_surrogate(key, inner) if isinstance(key, str) else None
        found = found if found is not None else _lone_surrogate(item, inner)
        if found is not None:
            return found
    return None


def _load_dataset(spec: DatasetSpec):
    """A .parquet file or a Hub dataset through `datasets.load_dataset`."""
    import datasets

    try:
        if is_local(spec.path):
            path = Path(os.path.expanduser(spec.path))
            return datasets.load_dataset(
                _BUILDERS[path.suffix.lower()], data_files={"train": str(path)}, split=spec.split
            )
        return datasets.load_dataset(spec.path, spec.name, data_dir=spec.data_dir, split=spec.split)
    except Exception as exc:  # datasets raises many types; the user needs one line naming the source
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LoraRlhfError(f"could not read dataset {spec.display()!r}: {first}") from exc
