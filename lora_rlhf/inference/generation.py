"""What a generation is made of, around the decoding engine (models/engine.py, inference/engine.py): the rendered
prompt, the Completion returned, stop strings and the re-chunking of streamed text."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator, Iterator, Sequence

from lora_rlhf.data.chat import Messages, Prompt, render_prompt
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.models.engine import TokenLogprob

StopCheck = Callable[[], bool]  # asked once per generated token: True ends generation there


@dataclasses.dataclass
class Completion:
    """One response and the counts OpenAI's `usage` and `finish_reason` report."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (the token budget ran out)
    # Per generated token, when asked for (inference/engine.py); None otherwise.
    logprobs: list[TokenLogprob] | None = None


def render(tokenizer, prompt: Prompt, *, chat: bool = True, system: str | None = None) -> str:
    """The model text for `prompt`: through the chat template when `chat` (and the tokenizer has one), else raw."""
    if not chat:
        if isinstance(prompt, str):
            return prompt
        return render_prompt(_NoTemplate(), prompt)
    messages: Messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system and not any(m.get("role") == "system" for m in messages):
        messages = [{"role": "system", "content": system}, *messages]
    return render_prompt(tokenizer, messages)


class _NoTemplate:
    chat_template = None


class Halted(LoraRlhfError):
    """Generation was called off (`halt()` was true) before it started: the caller stopped waiting for it."""


@dataclasses.dataclass
class _Emitted:
    text: str
    cut: bool


def emit_until_stop(pieces: Iterator[str], stop: Sequence[str]) -> Generator[str, None, _Emitted]:
    """Re-chunk streamed text so no stop string (nor its start, held back) is ever emitted."""
    hold = max((len(s) for s in stop), default=1) - 1
    text, sent = "", 0
    for piece in pieces:
        text += piece
        cut_text, cut = cut_at_stop(text, stop)
        if cut:
            if len(cut_text) > sent:
                yield cut_text[sent:]
            return _Emitted(cut_text, True)
        safe = len(text) - hold
        if safe > sent:
            yield text[sent:safe]
            sent = safe
    if len(text) > sent:
        yield text[sent:]
    return _Emitted(text, False)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the earliest stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)
