"""Token log-probs in OpenAI's two shapes: chat's `logprobs.content` and the legacy completions `logprobs`.

The log-probs are log-softmax of the scores each token was drawn from (models/sampling.py): the logits,
after any frequency/presence penalty, divided by the temperature, after top-k and top-p (a token top-p
removed reports -9999); greedy requests (temperature 0) report the model's own distribution, log-softmax
of the (penalized) logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lora_rlhf.inference.generation import TokenLogprob


def chat_logprobs(tokenizer, logprobs: Sequence[TokenLogprob] | None, text: str) -> dict[str, Any] | None:
    """`choices[i].logprobs` of a chat completion: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    if logprobs is None:
        return None
    content = []
    for entry in _within(tokenizer, logprobs, text):
        top = [_token(tokenizer, t, lp) for t, lp in entry.top]
        content.append(_token(tokenizer, entry.token, entry.logprob) | {"top_logprobs": top})
    return {"content": content, "refusal": None}


def completion_logprobs(tokenizer, logprobs: Sequence[TokenLogprob] | None, text: str) -> dict[str, Any] | None:
    """`choices[i].logprobs` of a legacy completion: tokens, token_logprobs, top_logprobs ({token: logprob}) and
    text_offset (characters from the start of the choice's text)."""
    if logprobs is None:
        return None
    kept = _within(tokenizer, logprobs, text)
    tokens = [_text(tokenizer, e.token) for e in kept]
    offsets = [0]
    for token in tokens[:-1]:
        offsets.append(offsets[-1] + len(token))
    return {
        "tokens": tokens,
        "token_logprobs": [e.logprob for e in kept],
        "top_logprobs": [{_text(tokenizer, t): lp for t, lp in e.top} for e in kept],
        "text_offset": offsets[: len(tokens)],
    }


def _within(tokenizer, logprobs: Sequence[TokenLogprob], text: str) -> list[TokenLogprob]:
    """The tokens that make up `text`: a response cut at a stop string drops the tokens after the cut."""
    ids = [entry.token for entry in logprobs]
    if len(tokenizer.decode(ids, skip_special_tokens=True)) <= len(text):
        return list(logprobs)
    for k in range(len(ids)):
        # Decoding prefixes, as the text was decoded: single tokens need not add up to it (spaces, special tokens).
        if len(tokenizer.decode(ids[:k], skip_special_tokens=True)) >= len(text):
            return list(logprobs[:k])
    return list(logprobs)


def _token(tokenizer, token: int, logprob: float) -> dict[str, Any]:
    text = _text(tokenizer, token)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def _text(tokenizer, token: int) -> str:
    return tokenizer.decode([token], skip_special_tokens=False)
