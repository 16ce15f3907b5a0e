"""Public preference formats read as rankings rows (issue 28): each reader is pure (rows in, rankings rows out).

A data spec's `format` picks the reader; "auto" looks at the first row and logs its choice. The rankings rows
then go through `data/rankings.py` like any others, so the tie policy, identical-response and one-line error
rules are the same for every format.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from lora_rlhf.data.formats import nectar, oasst, ultrafeedback
from lora_rlhf.data.formats.common import Item
from lora_rlhf.data.formats.options import Format, OasstOptions, UltraFeedbackOptions

logger = logging.getLogger(__name__)

Reader = Callable[[Sequence[Mapping[str, Any]], Any, Counter], Iterator[Item]]
READERS: dict[str, tuple[Reader, str]] = {  # format -> (reader, the data spec key holding its options, or "")
    "oasst_trees": (oasst.read_trees, "oasst"),
    "oasst_messages": (oasst.read_messages, "oasst"),
    "ultrafeedback": (ultrafeedback.read, "ultrafeedback"),
    "nectar": (nectar.read, ""),
}

__all__ = ["READERS", "Format", "OasstOptions", "UltraFeedbackOptions", "convert", "detect"]


def detect(row: Mapping[str, Any]) -> str:
    """The format of a row, from its fields (Arrow gives every row every column, so absent fields read as null)."""
    if isinstance(row.get("prompt"), Mapping):
        return "oasst_trees"
    if row.get("message_id") is not None and {"parent_id", "role", "text"} <= row.keys():
        return "oasst_messages"
    if row.get("completions") is not None and row.get("instruction") is not None:
        return "ultrafeedback"
    if row.get("answers") is not None and row.get("prompt") is not None:
        return "nectar"
    return "rankings"


def convert(rows: Sequence[Mapping[str, Any]], fmt: Format, options: Any, source: str) -> tuple[str, list[Item]]:
    """(the format read, its items); "rankings" rows give no items: the caller keeps them as they are.

    `options` is the data spec: each reader takes its own section of it (`oasst`, `ultrafeedback`).
    """
    chosen = fmt if fmt != "auto" else detect(rows[0]) if len(rows) else "rankings"
    if fmt == "auto" and chosen != "rankings":
        logger.info("%s: read as %s rows (detected from the first row; set `format` to choose)", source, chosen)
    if chosen == "rankings":
        return chosen, []
    reader, key = READERS[chosen]
    stats: Counter = Counter()
    items = list(reader(rows, getattr(options, key) if key else None, stats))
    made = sum(not isinstance(item[2], Exception) for item in items)
    left_out = ", ".join(f"{n} {what}" for what, n in sorted(stats.items()))
    logger.info(
        "%s: %d rankings from %d %s rows%s", source, made, len(rows), chosen, f"; left out: {left_out}" * bool(left_out)
    )
    return chosen, items
