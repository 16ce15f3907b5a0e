"""Field checks shared by every row format: one-line errors naming the file, row and field."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar

from lora_rlhf.errors import LoraRlhfError

logger = logging.getLogger(__name__)
T = TypeVar("T")
OnBadRow = Literal["error", "skip"]
# Chat roles a message may have: what every chat template knows (issue 12: others were accepted silently).
ROLES = ("system", "user", "assistant")


class BadRow(ValueError):
    """A row that cannot be used; the message names the field. Turned into a LoraRlhfError or a skip."""


def text_field(row: Mapping[str, Any], key: str, *, allow_empty: bool = False) -> str:
    if key not in row or row[key] is None:
        raise BadRow(f"missing field {key!r}")
    value = row[key]
    if not isinstance(value, str):
        raise BadRow(f"field {key!r} is {type(value).__name__}, expected a string")
    if not allow_empty and not value.strip():
        raise BadRow(f"field {key!r} is empty")
    return value


def messages_field(row: Mapping[str, Any], key: str = "messages") -> list[dict[str, str]]:
    value = row.get(key)
    if not isinstance(value, list) or not value:
        raise BadRow(f"field {key!r} must be a non-empty list of {{role, content}} messages")
    for i, message in enumerate(value):
        if (
            not isinstance(message, Mapping)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), str)
        ):
            raise BadRow(f"{key}[{i}] must be an object with string 'role' and 'content'")
        if message["role"] not in ROLES:
            raise BadRow(f"{key}[{i}]: role {message['role']!r} is not one of {', '.join(ROLES)}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def require_user_turn(prompt: list[dict[str, str]], key: str = "messages") -> None:
    """The turns before a response must hold the user's: without one a row trains on an empty (or system-only)
    prompt, where `{"prompt": ""}` is refused (issue 29)."""
    if not any(message["role"] == "user" for message in prompt):
        raise BadRow(f"field {key!r} has no 'user' turn before the assistant's response: no prompt to answer")


def prompt_field(row: Mapping[str, Any], key: str = "prompt") -> str | list[dict[str, str]]:
    """A prompt as TRL writes one: a string, or (conversational) the messages before the response, ending
    with the user's turn, e.g. a system turn then the user's."""
    value = row.get(key)
    if not isinstance(value, list):
        return text_field(row, key)
    try:
        messages = messages_field(row, key)
    except BadRow as exc:  # name the field, as every other error of a row does
        message = str(exc)
        raise BadRow(message if message.startswith("field") else f"field {key!r}: {message}") from None
    if messages[-1]["role"] != "user":
        raise BadRow(f"field {key!r}: its last message's role is {messages[-1]['role']!r}, expected 'user'")
    return messages


@dataclasses.dataclass
class RowReport:
    """How many rows a dataset had, and why some were not used."""

    source: str
    rows: int = 0
    kept: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    truncated: int = 0  # rows kept with their response shortened to fit (never to nothing)
    no_signal_pairs: int = 0  # ranked pairs left out: their two responses were identical as the model sees them

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    @property
    def dropped(self) -> int:
        return sum(self.skipped.values())

    def log(self) -> None:
        if self.truncated:
            logger.info("%s: %d responses truncated to fit max_length", self.source, self.truncated)
        if self.no_signal_pairs:
            logger.warning(
                "%s: %d ranked pairs carried no signal (their responses were identical, in text or once cut to "
                "max_length) and were left out",
                self.source,
                self.no_signal_pairs,
            )
        if self.dropped:
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items()))
            logger.warning("%s: dropped %d of %d rows (%s)", self.source, self.dropped, self.rows, reasons)
        else:
            logger.info("%s: using all %d rows", self.source, self.rows)


def parse_rows(
    rows: Iterable[Mapping[str, Any]], parse: Callable[[Mapping[str, Any]], T], source: str, on_bad_row: OnBadRow
) -> tuple[list[T], RowReport]:
    """Apply `parse` to every row; a BadRow raises a one-line LoraRlhfError (or is counted, when skipping).

    The error names the row's place: `line N` of a local JSON-lines file, else `row N` (0-based).
    """
    report = RowReport(source)
    parsed = []
    place = getattr(rows, "place", lambda index: f"row {index}")  # local JSON names the line
    for index, row in enumerate(rows):
        report.rows += 1
        try:
            if isinstance(row, BadRow):  # a format reader's verdict on the row it was made from
                raise row
            parsed.append(parse(row))
        except BadRow as exc:
            if on_bad_row == "error":
                raise LoraRlhfError(f"{source}, {place(index)}: {exc}") from None
            report.skip(_reason(str(exc)))
    report.kept = len(parsed)
    return parsed, report


def _reason(message: str) -> str:
    """Group skip messages by kind (drop the row-specific details after the first ':')."""
    return message.split(":")[0]
