"""What the readers of public preference formats share: ranks from scores, and typed field reads."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lora_rlhf.data.rows import BadRow

# One reader's output: (index of the source row, where in it the ranking comes from or "", and a rankings row
# {prompt, responses, ranks} or the BadRow that makes the source row unusable).
Item = tuple[int, str, "dict[str, Any] | BadRow"]


def dense_ranks(values: Sequence[float], *, higher_is_better: bool) -> list[int]:
    """Ranks with 0 = best; equal values share a rank (a tie, left to rm.ties), and no rank is skipped.

    Dense ranks keep every rank within 0..K-1, which the rankings rows require (e.g. scores 7, 9, 7, 3 -> 1, 0, 1, 2).
    """
    order = sorted(set(values), reverse=higher_is_better)
    place = {value: rank for rank, value in enumerate(order)}
    return [place[value] for value in values]


def kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def obj(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        raise BadRow(f"missing field {field!r}")
    if not isinstance(value, Mapping):
        raise BadRow(f"field {field!r} is {kind(value)}, expected an object")
    return value


def text(row: Mapping[str, Any], key: str, field: str) -> str:
    value = row.get(key)
    if value is None:
        raise BadRow(f"missing field {field!r}")
    if not isinstance(value, str):
        raise BadRow(f"field {field!r} is {kind(value)}, expected a string")
    if not value.strip():
        raise BadRow(f"field {field!r} is empty")
    return value


def number(value: Any, field: str) -> float | None:
    """A finite number, or None for null (Arrow's NaN of a missing float counts as null)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRow(f"field {field!r} is {value!r}, expected a number or null")
    return float(value)


def flag(row: Mapping[str, Any], key: str, field: str) -> bool | None:
    value = row.get(key)
    if value is not None and not isinstance(value, bool):
        raise BadRow(f"field {field!r} is {value!r}, expected true, false or null")
    return value


def items_list(row: Mapping[str, Any], key: str, field: str, *, optional: bool = False) -> list[Any]:
    value = row.get(key)
    if value is None and optional:
        return []
    if not isinstance(value, list):
        raise BadRow(
            f"missing field {field!r}" if value is None else f"field {field!r} is {kind(value)}, expected a list"
        )
    return value
