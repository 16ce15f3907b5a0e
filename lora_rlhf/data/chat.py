"""Turning prompts (plain strings or chat messages) into model text with the tokenizer's chat template."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Messages = list[dict[str, str]]
Prompt = str | Messages


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


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
