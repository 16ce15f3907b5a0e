"""Request bodies of the OpenAI-compatible API (the fields this server honours; unknown ones are ignored)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from lora_rlhf.inference.options import GenerationOptions

# OpenAI's documented defaults: 16 tokens for completions, temperature 1.
_DEFAULT_MAX_TOKENS = 16


class _Sampling(BaseModel):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    stream_options: StreamOptions | None = None
    user: str | None = None

    def options(self, default_max_tokens: int = _DEFAULT_MAX_TOKENS) -> GenerationOptions:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return GenerationOptions(
            max_new_tokens=self.max_tokens or default_max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop,
            seed=self.seed,
        )


class StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(min_length=1)
    echo: bool = False
    logprobs: int | None = None


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None

    def options(self, default_max_tokens: int = 256) -> GenerationOptions:
        options = super().options(default_max_tokens)
        if self.max_completion_tokens is not None:
            options.max_new_tokens = self.max_completion_tokens
        return options

    def conversation(self) -> list[dict[str, str]]:
        # "developer" is OpenAI's newer name for the system role; chat templates know "system".
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class LoadAdapterRequest(BaseModel):
    name: str = Field(min_length=1)
    path: str = Field(min_length=1)


_Sampling.model_rebuild()
CompletionRequest.model_rebuild()
ChatCompletionRequest.model_rebuild()
