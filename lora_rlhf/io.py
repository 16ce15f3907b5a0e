"""Atomic file and folder writes, so an interrupted run never leaves an output that looks complete; JSON read with
one-line errors."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lora_rlhf.errors import LoraRlhfError


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `target`; on success it replaces `target` in one rename.

    On an exception the temporary folder is removed and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside `target` for writing; it replaces `target` only when closed cleanly."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(target: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_file(target) as handle:
        json.dump(obj, handle, indent=2, sort_keys=False)
        handle.write("\n")


@dataclasses.dataclass(frozen=True)
class JsonWording:
    """The one-line errors of `parse_json`, as `str.format` templates: each reader words them for what it reads.

    Every template gets `where` (what the caller names the text by). `not_utf8` also gets `byte` (the bad byte),
    `offset` (its 0-based index) and `column` (offset + 1); `not_json` gets `msg` and `column` (JSON's own),
    `line` (the line of the text JSON stopped on), `snippet` (that line's start, quoted) and `error` (the whole
    `json.JSONDecodeError`); `too_deep` gets `snippet` (the text's start, quoted).
    """

    not_utf8: str = "{where}: byte {offset} is not UTF-8"
    not_json: str = "{where}: not valid JSON ({msg}, column {column})"
    too_deep: str = "{where}: nests arrays or objects too deeply to read as a row"


def decode_text(raw: bytes, where: str, wording: JsonWording = JsonWording(), *, encoding: str = "utf-8") -> str:
    """`raw` decoded, or `wording.not_utf8` as a LoraRlhfError."""
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1]
        message = wording.not_utf8.format(where=where, byte=bad, offset=exc.start, column=exc.start + 1)
        raise LoraRlhfError(message) from None


def parse_json(data: bytes | str, where: str, wording: JsonWording = JsonWording(), *, encoding: str = "utf-8") -> Any:
    """`data` (bytes, decoded first; or text) as JSON. What would be a traceback is one line (issue 29): bytes that are
    not text, text that is not JSON, and JSON nested past Python's recursion limit (json.loads recurses per level)."""
    text = data if isinstance(data, str) else decode_text(data, where, wording, encoding=encoding)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        line = text.split("\n")[exc.lineno - 1]  # JSON counts lines by "\n" alone
        message = wording.not_json.format(
            where=where, msg=exc.msg, column=exc.colno, line=exc.lineno, snippet=snippet(line), error=exc
        )
        raise LoraRlhfError(message) from None
    except RecursionError:
        raise LoraRlhfError(wording.too_deep.format(where=where, snippet=snippet(text))) from None


def snippet(text: str) -> str:
    """The start of a bad line, quoted, short enough for a one-line error."""
    text = text.strip()
    return repr(text if len(text) <= 40 else text[:37] + "...")
