"""The OpenAI-compatible app: /v1/models, /v1/completions, /v1/chat/completions, and adapter loading at run time.

The request's `model` picks the adapter ("base" = the bare base). Generation goes through the
AdapterRegistry's lock, so concurrent requests for different adapters are served one after another,
each entirely under its own adapter.
"""

from __future__ import annotations

import hmac
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse

from lora_rlhf.inference.registry import AdapterRegistry
from lora_rlhf.serve.admin import AdminPolicy, add_admin_routes
from lora_rlhf.serve.errors import APIError, install_handlers
from lora_rlhf.serve.schemas import ChatCompletionRequest, CompletionRequest
from lora_rlhf.serve.streaming import sse_events, usage_of

OWNER = "lora_rlhf"


def create_app(
    registry: AdapterRegistry,
    *,
    allowed_roots: Sequence[str | Path] = (),
    allow_hub: bool = False,
    api_key: str | None = None,
    default_max_tokens: int = 256,
) -> FastAPI:
    """The FastAPI app serving `registry`.

    allowed_roots: folders under which `POST /v1/adapters` may load adapters (none: loading is off).
    allow_hub: let `POST /v1/adapters` download Hub ids too.
    api_key: if set, every request must carry `Authorization: Bearer <api_key>`.
    default_max_tokens: response budget of a chat request that sets none.
    """
    app = FastAPI(title="lora_rlhf", dependencies=[Depends(_auth(api_key))])
    app.state.registry = registry
    install_handlers(app)
    add_admin_routes(app, registry, AdminPolicy.make(allowed_roots, allow_hub), _model_card)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "models": registry.names}

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(registry, name) for name in registry.names]}

    @app.get("/v1/models/{name}")
    def retrieve_model(name: str) -> dict[str, Any]:
        registry.require(name)
        return _model_card(registry, name)

    @app.post("/v1/completions")
    def completions(body: CompletionRequest):
        registry.require(body.model)
        return _completions(registry, body)

    @app.post("/v1/chat/completions")
    def chat_completions(body: ChatCompletionRequest):
        registry.require(body.model)
        return _chat(registry, body, default_max_tokens)

    return app


def _auth(api_key: str | None):
    def check(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise APIError(401, "invalid or missing API key (send Authorization: Bearer <key>)", "invalid_api_key")

    return check


def _model_card(registry: AdapterRegistry, name: str) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": registry.created.get(name, int(time.time())),
        "owned_by": OWNER,
        "root": registry.stack.base_name,
        "parent": None if name == "base" else "base",
    }


def _completions(registry: AdapterRegistry, body: CompletionRequest):
    options = body.options()
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    meta = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": body.model}
    if body.stream:
        _check_streamable(len(prompts), body.n)
        pieces = registry.stream(body.model, prompts[0], options)

        def chunk(text: str | None, finish: str | None) -> dict:
            return meta | {"choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]}

        usage = _usage_chunk(meta, body)
        return _sse(sse_events(pieces, chunk, usage=usage))
    texts = [p for p in prompts for _ in range(body.n)]
    done = registry.complete(body.model, texts, options)
    choices = [
        {"index": i, "text": (texts[i] if body.echo else "") + c.text, "logprobs": None, "finish_reason": c.finish_reason}
        for i, c in enumerate(done)
    ]
    return meta | {"choices": choices, "usage": usage_of(done)}


def _chat(registry: AdapterRegistry, body: ChatCompletionRequest, default_max_tokens: int):
    options = body.options(default_max_tokens)
    text = registry.render(body.conversation(), chat=True)
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()), "model": body.model}
    if body.stream:
        _check_streamable(1, body.n)
        pieces = registry.stream(body.model, text, options)
        stream_meta = meta | {"object": "chat.completion.chunk"}

        def chunk(piece: str | None, finish: str | None) -> dict:
            delta = {"content": piece} if piece is not None else {}
            return stream_meta | {"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        first = stream_meta | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]}
        return _sse(sse_events(pieces, chunk, first=first, usage=_usage_chunk(stream_meta, body)))
    done = registry.complete(body.model, [text] * body.n, options)
    choices = [
        {"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": None, "finish_reason": c.finish_reason}
        for i, c in enumerate(done)
    ]
    return meta | {"choices": choices, "usage": usage_of(done)}


def _usage_chunk(meta: dict, body) -> Any:
    if body.stream_options is None or not body.stream_options.include_usage:
        return None
    return lambda done: meta | {"choices": [], "usage": usage_of([done])}


def _check_streamable(prompts: int, n: int) -> None:
    if prompts != 1 or n != 1:
        raise APIError(400, "streaming serves one prompt with n=1; send several requests instead", "unsupported", "stream")


def _sse(events) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
