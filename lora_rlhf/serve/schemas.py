"""Request bodies of the OpenAI-compatible API: the fields this server honours, and a 400 naming any OpenAI
option it does not (nothing is silently ignored but `user` and fields OpenAI does not define)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lora_rlhf.inference.options import SEED_MAX, SEED_MIN, GenerationOptions
from lora_rlhf.serve.errors import APIError

# OpenAI's documented defaults: 16 tokens for completions, temperature 1.
DEFAULT_COMPLETION_TOKENS = 16
# Most alternatives per token: OpenAI's bound for chat's top_logprobs (the legacy `logprobs` allows 5; vLLM 20).
MAX_TOP_LOGPROBS = 20
# OpenAI request options this server does not implement, with the value that means "off" (a 400 otherwise).
_UNSUPPORTED: dict[str, Any] = {
    "logit_bias": None,
    "tools": None,
    "tool_choice": "none",
    "functions": None,
    "function_call": "none",
    "response_format": None,
    "suffix": None,
    "best_of": 1,
    "prediction": None,
    "audio": None,
    "modalities": None,
}


class _Request(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def _utf8_only(cls, data: Any) -> Any:
        # JSON may escape a lone UTF-16 surrogate ("\ud800"); no tokenizer can encode it (issue 12).
        path = _lone_surrogate(data)
        if path is not None:
            raise ValueError(f"{path or 'body'} holds a lone UTF-16 surrogate, which is not valid Unicode text")
        return data


def _lone_surrogate(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string in `value` that cannot be encoded as UTF-8, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _lone_surrogate(key, path) if isinstance(key, str) else None
        found = found if found is not None else _lone_surrogate(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


class _Sampling(_Request):
    model_config = ConfigDict(extra="allow")  # kept, so that `check_supported` can name an option it cannot honour

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    stream_options: StreamOptions | None = None
    user: str | None = None

    def requested_tokens(self) -> int | None:
        """The response budget the request asks for, if any."""
        return self.max_tokens

    def requested_param(self) -> str:
        """The field `requested_tokens` comes from, for a 400 about it."""
        return "max_tokens"

    def top_logprobs(self) -> int | None:
        """Alternatives to report per token (0: only the chosen token's log-prob); None: no log-probs."""
        return None

    def check_supported(self) -> None:
        """A 400 naming the first option set to something this server would otherwise ignore."""
        for name, off in _UNSUPPORTED.items():
            value = (self.model_extra or {}).get(name)
            if value is not None and value != off and value != [] and value != {}:
                raise APIError(400, f"{name} is not supported by this server; leave it out", None, name)
        if self.stream and self.top_logprobs() is not None:
            raise APIError(400, "logprobs are not available with stream; send stream: false", None, "logprobs")

    def options(self, max_new_tokens: int) -> GenerationOptions:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return GenerationOptions(
            max_new_tokens=max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop,
            seed=self.seed,
            frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty,
        )


class StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(min_length=1)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    def top_logprobs(self) -> int | None:
        return self.logprobs

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo and self.logprobs is not None:
            raise APIError(400, "logprobs of the echoed prompt are not supported; send echo: false", None, "echo")


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
    top_logprobs_: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS, alias="top_logprobs")

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def requested_param(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    def top_logprobs(self) -> int | None:
        if self.top_logprobs_ is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", None, "top_logprobs")
        return (self.top_logprobs_ or 0) if self.logprobs else None

    def conversation(self) -> list[dict[str, str]]:
        # "developer" is OpenAI's newer name for the system role; chat templates know "system".
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class LoadAdapterRequest(_Request):
    name: str = Field(min_length=1)
    path: str = Field(min_length=1)


_Sampling.model_rebuild()
CompletionRequest.model_rebuild()
ChatCompletionRequest.model_rebuild()
