"""Demonstrations for SFT: {prompt, completion} or {messages} rows -> token ids with prompt labels masked."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

from lora_rlhf.data.chat import Prompt, render_prompt, split_messages
from lora_rlhf.data.rows import (
    BadRow,
    OnBadRow,
    RowReport,
    messages_field,
    parse_rows,
    prompt_field,
    require_user_turn,
    text_field,
)
from lora_rlhf.data.sources import DatasetSpec, load_rows

IGNORE_INDEX = -100  # label of positions that carry no loss (the prompt; padding)


@dataclasses.dataclass
class Demonstration:
    prompt: Prompt  # the user's prompt: a string or the conversation before the response
    completion: str  # the demonstrated response


class DemoText(NamedTuple):
    """A demonstration as model text: unpacks as (prompt_text, completion)."""

    prompt_text: str  # the prompt rendered with the tokenizer's chat template (generation prompt included)
    completion: str  # the demonstrated response, to follow prompt_text directly


@dataclasses.dataclass
class SFTExample:
    input_ids: list[int]  # rendered prompt + completion + EOS
    labels: list[int]  # IGNORE_INDEX over the prompt, the token ids over the completion and EOS
    truncated: bool  # the completion was cut to fit max_length (never to nothing)


def parse_demonstration(row: Mapping[str, Any]) -> Demonstration:
    """One row in either format (docs/design.md, "Data formats"); BadRow names the field at fault."""
    if "messages" in row and row.get("messages") is not None:
        messages = messages_field(row)
        try:
            prompt, completion = split_messages(messages)
        except ValueError as exc:
            raise BadRow(f"field 'messages': {exc}") from None
        if not completion.strip():
            raise BadRow("field 'messages': the assistant's response is empty")
        require_user_turn(prompt)
        return Demonstration(prompt, completion)
    if "prompt" not in row and "completion" not in row:
        raise BadRow("missing field 'prompt' (demonstrations need {prompt, completion} or {messages})")
    return Demonstration(prompt_field(row), text_field(row, "completion"))


def encode_demonstration(demo: Demonstration, tokenizer, max_length: int) -> SFTExample:
    """Tokenize prompt and completion separately (as generation sees them); loss only on the completion."""
    prompt_ids = tokenizer(render_prompt(tokenizer, demo.prompt), add_special_tokens=False).input_ids
    completion_ids = tokenizer(demo.completion, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    room = max_length - len(prompt_ids)
    if room < 1:
        raise BadRow(f"prompt longer than max_length ({len(prompt_ids)} tokens, max_length {max_length})")
    truncated = len(completion_ids) > room
    completion_ids = completion_ids[:room]
    return SFTExample(prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids, truncated)


def read_demonstrations(spec: DatasetSpec, on_bad_row: OnBadRow = "error") -> tuple[list[Demonstration], RowReport]:
    """Parse every row of `spec` into a Demonstration (one-line errors naming file, row and field)."""
    return parse_rows(load_rows(spec), parse_demonstration, spec.display(), on_bad_row)


def load_demonstrations(
    spec: DatasetSpec, tokenizer, *, on_bad_row: OnBadRow = "error"
) -> tuple[list[DemoText], RowReport]:
    """Every demonstration of `spec` as (prompt_text, completion), the prompt rendered with the chat template.

    For stages that need demonstration text rather than SFT batches: PPO-ptx's LM term and the reward
    model's bias (InstructGPT §3.5 centres rewards on the demonstrations).
    """
    demos, report = read_demonstrations(spec, on_bad_row)
    return [DemoText(render_prompt(tokenizer, d.prompt), d.completion) for d in demos], report


def load_sft_examples(
    spec: DatasetSpec, tokenizer, max_length: int, on_bad_row: OnBadRow = "error"
) -> tuple[list[SFTExample], RowReport]:
    """Parse and tokenize every row; a prompt that leaves no room for a response is a bad row."""
    examples, report = parse_rows(
        load_rows(spec),
        lambda row: encode_demonstration(parse_demonstration(row), tokenizer, max_length),
        spec.display(),
        on_bad_row,
    )
    report.truncated = sum(e.truncated for e in examples)
    return examples, report
