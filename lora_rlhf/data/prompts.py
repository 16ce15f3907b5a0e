"""Prompts for PPO and evaluation: {"prompt"} rows (a string or, conversational, messages) or {"messages"} rows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lora_rlhf.data.chat import Prompt
from lora_rlhf.data.rows import BadRow, OnBadRow, RowReport, messages_field, parse_rows, prompt_field, require_user_turn
from lora_rlhf.data.sources import DatasetSpec, load_rows


def parse_prompt(row: Mapping[str, Any]) -> Prompt:
    if row.get("messages") is not None:
        messages = messages_field(row)
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]  # a demonstration's answer is not part of the prompt
        if not messages:
            raise BadRow("field 'messages' has no turn before the assistant's")
        require_user_turn(messages)
        return messages
    return prompt_field(row)


def load_prompts(spec: DatasetSpec, on_bad_row: OnBadRow = "error") -> tuple[list[Prompt], RowReport]:
    """Every prompt of `spec` (strings or message lists), with a report of skipped rows."""
    return parse_rows(load_rows(spec), parse_prompt, spec.display(), on_bad_row)


def prompt_text(prompt: Prompt) -> str:
    """The user's words of a prompt (the last user turn of a conversation), e.g. for a gold judge."""
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]
