"""Turning prompts (plain strings or chat messages) into model text with the tokenizer's chat template."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

Messages = list[dict[str, str]]
Prompt = str | Messages
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def user_turn(text: str, system_prompt: str | None = None) -> Messages:
    """`text` as one user turn, after a system turn holding `system_prompt` when one is given (None: none, so the
    chat template adds its own default, as IFEval is rendered)."""
    turns = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    return turns + [{"role": "user", "content": text}]


def render_prompt(tokenizer, prompt: Prompt) -> str:
    """The text the model sees before its response.

    With a chat template, a plain string becomes one user turn; without one, messages are joined
    as "role: content" lines so base models without templates still work.
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, str):
        return prompt
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


def split_messages(messages: Sequence[Mapping[str, Any]]) -> tuple[Messages, str]:
    """A conversation ending in an assistant turn -> (the turns before it, that turn's content).

    Raises ValueError (the caller adds file and row) if the last turn is not the assistant's.
    """
    if not messages:
        raise ValueError("messages is empty")
    last = messages[-1]
    if last.get("role") != "assistant":
        raise ValueError(f"the last message's role is {last.get('role')!r}, expected 'assistant'")
    return [dict(m) for m in messages[:-1]], str(last.get("content", ""))


def hh_messages(text: str) -> Prompt:
    """An Anthropic-style transcript ending in an open assistant turn -> chat messages.

    "\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:" (hh-rlhf's shared prefix, or Nectar's prompt, which
    ends "Assistant: ") becomes user/assistant/user turns; text that does not parse so is returned as it is.
    """
    body = text.rstrip().removesuffix("\n\nAssistant:").lstrip("\n")
    parts = _HH_TURN.split("\n\n" + body + "\n\n")
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    return messages if messages and messages[-1]["role"] == "user" else text
