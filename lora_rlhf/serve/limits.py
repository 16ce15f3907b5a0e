"""What keeps one request from stalling the server (issue 12): a response budget bounded by the model's
context and a server limit, a per-request time limit, and halting generation when its client leaves or the
server shuts down.

Requests are decoded together in one batch that rows join and leave at every step (serve/batcher.py), so a
request that runs for minutes holds one of its `--max-batch-size` places all that time: with enough of them, every
queued request waits. Each request therefore gets a `Halt`:
generation asks it after every token of its row, and it turns true when the client disconnects, the request's
time is up, or the server is stopping (`InFlight.halt_all`); a halted row ends while the rest of its batch goes on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from starlette.requests import Request

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.serve.errors import APIError
from lora_rlhf.validation import check_positive_ints

Reason = Literal["disconnected", "timeout", "shutdown"]

# How often a running request checks whether its client is still there, in seconds.
_DISCONNECT_POLL_S = 0.25


@dataclasses.dataclass(frozen=True)
class ServeLimits:
    """Per-request bounds of the server (`lora-rlhf serve --max-tokens-limit/--request-timeout`)."""

    # Most tokens one response may ask for, whatever room the model's context leaves: a bigger
    # `max_tokens` is refused with 400. Keeps one request from holding the generation lock for minutes.
    max_tokens: int = 4096
    # Seconds a request may take, waiting for the lock included (None = no limit). Generation then stops:
    # the response keeps what was generated, with finish_reason "length"; a request still waiting gets 503.
    request_timeout: float | None = 300.0
    # Most responses generated together in one batch (--max-batch-size; 1 = one at a time): bounds the
    # activations and KV cache of a forward pass.
    max_batch_size: int = 8
    # Most responses waiting for a batch (--max-queue); a request that would exceed it is answered 429.
    max_queue: int = 256
    # Seconds an idle server waits for concurrent requests to join a batch before it starts one.
    batch_window_s: float = 0.01

    def __post_init__(self) -> None:
        check_positive_ints(self, ("max_tokens",))
        if self.request_timeout is not None and not self.request_timeout > 0:
            raise LoraRlhfError(f"request_timeout: {self.request_timeout!r} must be > 0 seconds (or None: no limit)")
        check_positive_ints(self, ("max_batch_size", "max_queue"))
        if not self.batch_window_s >= 0:
            raise LoraRlhfError(f"batch_window_s: {self.batch_window_s!r} must be >= 0 seconds")


class Halt:
    """One request's stop flag; calling it (once per generated token) says whether generation must end now."""

    def __init__(self, timeout: float | None) -> None:
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.reason: Reason | None = None
        self._set = threading.Event()

    def set(self, reason: Reason) -> None:
        if not self._set.is_set():
            self.reason = reason
            self._set.set()

    def __call__(self) -> bool:
        if not self._set.is_set() and self.deadline is not None and time.monotonic() >= self.deadline:
            self.set("timeout")
        return self._set.is_set()


class InFlight:
    """The Halt of every request being served, so that a shutdown can stop them all at once."""

    def __init__(self) -> None:
        self._halts: set[Halt] = set()
        self._lock = threading.Lock()
        self.closing = False

    @contextmanager
    def track(self, timeout: float | None) -> Iterator[Halt]:
        halt = Halt(timeout)
        with self._lock:
            if self.closing:
                raise APIError(503, "the server is shutting down", "server_shutting_down")
            self._halts.add(halt)
        try:
            yield halt
        finally:
            with self._lock:
                self._halts.discard(halt)

    def halt_all(self) -> None:
        """Stop every running generation at its next token and refuse new requests (server shutdown)."""
        with self._lock:
            self.closing = True
            halts = list(self._halts)
        for halt in halts:
            halt.set("shutdown")


async def watch_disconnect(request: Request, halt: Halt) -> None:
    """Set `halt` when the client of `request` disconnects; run as a task, cancelled when the response is done."""
    while not halt():
        if await request.is_disconnected():
            halt.set("disconnected")
            return
        await asyncio.sleep(_DISCONNECT_POLL_S)


def token_budget(
    requested: int | None,
    default: int,
    prompt_tokens: int,
    context: int | None,
    limit: int,
    prompt_param: str,
    requested_param: str = "max_tokens",
) -> int:
    """The response budget: `requested` (else `default`), within `limit` and the context the prompt leaves.

    A prompt that fills the context, or a `max_tokens` over either bound, is a 400 in OpenAI's shape
    (as OpenAI and vLLM answer) naming `requested_param`, the field the client set (chat's
    `max_completion_tokens` or `max_tokens`); an unset `max_tokens` shrinks the default to fit instead.
    """
    if context is not None and prompt_tokens >= context:
        raise APIError(
            400,
            f"the prompt is {prompt_tokens} tokens, and this model's context is {context} tokens: "
            "no room is left for a response",
            "context_length_exceeded",
            prompt_param,
        )
    room = limit if context is None else min(limit, context - prompt_tokens)
    if requested is None:
        return min(default, room)
    if requested > limit:
        raise APIError(
            400,
            f"{requested_param}: {requested} is more than this server allows ({limit}, --max-tokens-limit)",
            "max_tokens_too_large",
            requested_param,
        )
    if requested > room:
        raise APIError(
            400,
            f"{requested_param}: {requested} tokens and the prompt's {prompt_tokens} exceed this model's "
            f"context of {context} tokens; at most {room} are left",
            "context_length_exceeded",
            requested_param,
        )
    return requested
