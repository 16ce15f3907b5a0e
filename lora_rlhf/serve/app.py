"""The OpenAI-compatible app: /v1/models, /v1/completions, /v1/chat/completions, and adapter loading at run time.

The request's `model` picks the adapter ("base" = the bare base). Concurrent requests are decoded together
in one batch that rows join and leave at every step (serve/batcher.py), each row under its own adapter; a step
holds the AdapterRegistry's lock, so adapters are attached and detached between steps. A request's generation stops
when its client disconnects, its time limit passes, or the server shuts down (serve/limits.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from lora_rlhf.inference.engine import Row
from lora_rlhf.inference.generation import Halted
from lora_rlhf.inference.registry import AdapterRegistry
from lora_rlhf.serve.access import Access
from lora_rlhf.serve.admin import AdminPolicy, add_admin_routes
from lora_rlhf.serve.batcher import Batcher
from lora_rlhf.serve.errors import APIError, install_handlers
from lora_rlhf.serve.limits import (
    Halt,
    InFlight,
    ServeLimits,
    token_budget,
    watch_disconnect,
)
from lora_rlhf.serve.logprobs import chat_logprobs, completion_logprobs
from lora_rlhf.serve.schemas import (
    DEFAULT_COMPLETION_TOKENS,
    ChatCompletionRequest,
    CompletionRequest,
)
from lora_rlhf.serve.server import DEFAULT_HOST
from lora_rlhf.serve.streaming import sse_events, usage_of

OWNER = "lora_rlhf"
# Threads beyond one per queued response: model listing, admin routes, streams being read.
_SPARE_THREADS = 32


def create_app(
    registry: AdapterRegistry,
    *,
    allowed_roots: Sequence[str | Path] = (),
    allow_hub: bool = False,
    api_key: str | None = None,
    host: str = DEFAULT_HOST,
    default_max_tokens: int = 256,
    limits: ServeLimits | None = None,
) -> FastAPI:
    """The FastAPI app serving `registry`.

    allowed_roots: folders under which `POST /v1/adapters` may load adapters (none: loading is off).
    allow_hub: let `POST /v1/adapters` download Hub ids too.
    api_key: if set, every request must carry `Authorization: Bearer <api_key>`.
    host: the address the server binds (serve/access.py): on loopback, requests must be addressed to a loopback
        name; beyond it, the admin routes need `api_key`.
    default_max_tokens: response budget of a chat request that sets none.
    limits: the response budget and time limit of every request, and the batch and queue sizes (serve/limits.py).
    """
    limits = limits or ServeLimits()
    inflight = InFlight()
    batcher = Batcher(
        registry, max_batch_size=limits.max_batch_size, max_queue=limits.max_queue, window_s=limits.batch_window_s
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # A queued request waits in a worker thread: let --max-queue, not anyio's 40 threads, bound the queue.
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, limits.max_queue + _SPARE_THREADS)
        yield
        inflight.halt_all()  # for other ASGI servers; run_server halts before it waits for running requests
        batcher.close()

    access = Access(host, api_key)
    app = FastAPI(title="lora_rlhf", dependencies=[Depends(access.check_request)], lifespan=lifespan)
    app.state.registry = registry
    app.state.inflight = inflight
    app.state.batcher = batcher
    install_handlers(app)
    add_admin_routes(app, registry, AdminPolicy.make(allowed_roots, allow_hub, access.check_admin), _model_card)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "models": registry.names, "queued": batcher.queued}

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(registry, name) for name in registry.names]}

    @app.get("/v1/models/{name}")
    def retrieve_model(name: str) -> dict[str, Any]:
        registry.require(name)
        return _model_card(registry, name)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        registry.require(body.model)
        body.check_supported()
        work = functools.partial(_completions, registry, batcher, body, limits)
        return await _serve(request, inflight, limits, work)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        registry.require(body.model)
        body.check_supported()
        work = functools.partial(_chat, registry, batcher, body, limits, default_max_tokens=default_max_tokens)
        return await _serve(request, inflight, limits, work)

    return app


async def _serve(request: Request, inflight: InFlight, limits: ServeLimits, work: Callable[[Halt], Any]):
    """Run `work(halt)` off the event loop while watching for the client leaving; a stream keeps the watch until
    it ends.
    """
    with contextlib.ExitStack() as scope:
        halt = scope.enter_context(inflight.track(limits.request_timeout))
        watcher = asyncio.create_task(watch_disconnect(request, halt))
        scope.callback(watcher.cancel)
        try:
            result = await run_in_threadpool(work, halt)
        except Halted:
            raise _not_started(halt, limits) from None
        if isinstance(result, dict):
            return result
        return _sse(_until_closed(result, halt, scope.pop_all()))


async def _until_closed(lines: Iterator[str], halt: Halt, scope: contextlib.ExitStack) -> AsyncIterator[str]:
    # Starlette cancels this generator when the client disconnects; halting then frees the lock at the next token
    # (after a stream that ended by itself, the flag stops nothing).
    try:
        async for line in iterate_in_threadpool(lines):
            yield line
    finally:
        halt.set("disconnected")
        scope.close()


def _not_started(halt: Halt, limits: ServeLimits) -> APIError:
    if halt.reason == "timeout":
        return APIError(
            503,
            f"the request waited for the model past the server's time limit "
            f"({limits.request_timeout:g} s, --request-timeout)",
            "timeout",
        )
    if halt.reason == "shutdown":
        return APIError(503, "the server is shutting down", "server_shutting_down")
    return APIError(499, "the client disconnected", "client_disconnected")


def _model_card(registry: AdapterRegistry, name: str) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": registry.created.get(name, int(time.time())),
        "owned_by": OWNER,
        "root": registry.stack.base_name,
        "parent": None if name == "base" else "base",
    }


def _completions(registry: AdapterRegistry, batcher: Batcher, body: CompletionRequest, limits: ServeLimits, halt: Halt):
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    longest = max(registry.count_tokens(p, beyond=registry.context_length) for p in prompts)
    options = body.options(_budget(registry, body, longest, DEFAULT_COMPLETION_TOKENS, limits, "prompt"))
    meta = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.model,
    }
    if body.stream:
        _check_streamable(len(prompts), body.n)
        pieces = batcher.stream(Row(body.model, prompts[0], options, halt))

        def chunk(text: str | None, finish: str | None) -> dict:
            return meta | {"choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]}

        return sse_events(pieces, chunk, usage=_usage_chunk(meta, body))
    texts = [p for p in prompts for _ in range(body.n)]
    done = batcher.complete([Row(body.model, t, options, halt, body.top_logprobs()) for t in texts])
    tokenizer = registry.stack.tokenizer
    choices = [
        {
            "index": i,
            "text": (texts[i] if body.echo else "") + c.text,
            "logprobs": completion_logprobs(tokenizer, c.logprobs, c.text),
            "finish_reason": c.finish_reason,
        }
        for i, c in enumerate(done)
    ]
    return meta | {"choices": choices, "usage": usage_of(done)}


def _chat(
    registry: AdapterRegistry,
    batcher: Batcher,
    body: ChatCompletionRequest,
    limits: ServeLimits,
    halt: Halt,
    default_max_tokens: int,
):
    text = registry.render(body.conversation(), chat=True)
    prompt_tokens = registry.count_tokens(text, beyond=registry.context_length)
    options = body.options(_budget(registry, body, prompt_tokens, default_max_tokens, limits, "messages"))
    meta = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.model,
    }
    if body.stream:
        _check_streamable(1, body.n)
        pieces = batcher.stream(Row(body.model, text, options, halt))
        stream_meta = meta | {"object": "chat.completion.chunk"}

        def chunk(piece: str | None, finish: str | None) -> dict:
            delta = {"content": piece} if piece is not None else {}
            return stream_meta | {"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        first = stream_meta | {
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            ]
        }
        return sse_events(pieces, chunk, first=first, usage=_usage_chunk(stream_meta, body))
    done = batcher.complete([Row(body.model, text, options, halt, body.top_logprobs())] * body.n)
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": c.text},
            "logprobs": chat_logprobs(registry.stack.tokenizer, c.logprobs, c.text),
            "finish_reason": c.finish_reason,
        }
        for i, c in enumerate(done)
    ]
    return meta | {"choices": choices, "usage": usage_of(done)}


def _budget(registry: AdapterRegistry, body, prompt_tokens: int, default: int, limits: ServeLimits, param: str) -> int:
    return token_budget(
        body.requested_tokens(),
        default,
        prompt_tokens,
        registry.context_length,
        limits.max_tokens,
        param,
        body.requested_param(),
    )


def _usage_chunk(meta: dict, body) -> Any:
    if body.stream_options is None or not body.stream_options.include_usage:
        return None
    return lambda done: meta | {"choices": [], "usage": usage_of([done])}


def _check_streamable(prompts: int, n: int) -> None:
    if prompts != 1 or n != 1:
        raise APIError(
            400, "streaming serves one prompt with n=1; send several requests instead", "unsupported", "stream"
        )


def _sse(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
