"""Server-sent events in OpenAI's streaming format: one `data: {chunk}` per piece, then `data: [DONE]`."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Generator, Iterator
from typing import Any

from lora_rlhf.inference.generation import Completion
from lora_rlhf.serve.errors import error_body, status_of

logger = logging.getLogger(__name__)

Chunk = Callable[[str | None, str | None], dict[str, Any]]  # (text piece, finish reason) -> chunk body


def sse_events(
    pieces: Generator[str, None, Completion],
    chunk: Chunk,
    *,
    first: dict | None = None,
    usage: Callable[[Completion], dict] | None = None,
) -> Iterator[str]:
    """SSE lines for a streamed completion; an error after the stream started becomes an error event."""
    try:
        if first is not None:
            yield _line(first)
        while True:
            try:
                piece = next(pieces)
            except StopIteration as stop:
                done: Completion = stop.value
                break
            if piece:
                yield _line(chunk(piece, None))
        yield _line(chunk(None, done.finish_reason))
        if usage is not None:
            yield _line(usage(done))
    except Exception as exc:  # the status line is already sent; tell the client in-band
        status = status_of(exc)
        if status == 500:  # a bug, not a halted or refused request
            logger.exception("streaming failed")
        yield _line(error_body(status, str(exc) or type(exc).__name__))
    finally:
        pieces.close()
    yield "data: [DONE]\n\n"


def usage_of(completions: list[Completion]) -> dict[str, int]:
    prompt = sum(c.prompt_tokens for c in completions)
    completion = sum(c.completion_tokens for c in completions)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _line(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
