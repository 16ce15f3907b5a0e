"""Generate text with one role of a RoleStack: chat templates, sampling options, stop strings, streaming.

These functions do not lock; `AdapterRegistry` calls them while holding its lock, because
`RoleStack.use()` switches the one active adapter of the shared base for the whole model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Generator, Iterator, Sequence

import torch

from lora_rlhf.data.chat import Messages, Prompt, render_prompt
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.inference.options import GenerationOptions
from lora_rlhf.inference.penalties import penalties
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.models.sequences import until_stop

logger = logging.getLogger(__name__)

StopCheck = Callable[[], bool]  # asked once per generated token: True ends generation there


@dataclasses.dataclass
class TokenLogprob:
    """One generated token: its log-prob and the most likely alternatives, as (token id, log-prob)."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


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


@torch.no_grad()
def generate_texts(
    stack: RoleStack, role: str, texts: Sequence[str], options: GenerationOptions, *, halt: StopCheck | None = None
) -> list[Completion]:
    """Responses of `role` to already rendered prompt `texts`, generated as one left-padded batch.

    `halt` is asked after every token; once it returns True generation stops and the responses end
    there with finish_reason "length" (a client that left, a time limit, a server shutting down).
    """
    if halt is not None and halt():
        raise Halted("generation was called off before it started")
    tokenizer = stack.tokenizer
    batch = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False).to(stack.device)
    _seed(options)
    kwargs = _kwargs(stack, options, halt, width=batch.input_ids.shape[1])
    out = stack.generate(role, batch.input_ids, batch.attention_mask, **kwargs)
    width = batch.input_ids.shape[1]
    completions = []
    for row, mask in zip(out, batch.attention_mask):
        ids, stopped = response_ids(row[width:], stack)
        text, cut = cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), options.stop)
        finish = "stop" if stopped or cut else "length"
        completions.append(Completion(text, int(mask.sum()), len(ids), finish))
    return completions


def stream_text(
    stack: RoleStack,
    role: str,
    text: str,
    options: GenerationOptions,
    *,
    lock: threading.Lock | None = None,
    check: Callable[[str], None] | None = None,
    halt: StopCheck | None = None,
) -> Generator[str, None, Completion]:
    """Yield `role`'s response to the rendered prompt `text` piece by piece as it is generated.

    Generation runs in a worker thread that holds `lock` (if given) until it finishes, and first calls
    `check(role)` under the lock (the role may have been removed while waiting). Closing the
    iterator early (a client that disconnects) stops generation at the next token, and so does `halt`
    returning True (the response then ends with finish_reason "length"). The last item returned by
    the generator (its StopIteration value) is the finished Completion.
    """
    from transformers import TextIteratorStreamer

    tokenizer = stack.tokenizer
    cancel = threading.Event()

    def stopped() -> bool:
        return cancel.is_set() or (halt is not None and halt())

    batch = tokenizer([text], return_tensors="pt", add_special_tokens=False).to(stack.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = _kwargs(stack, options, stopped, width=batch.input_ids.shape[1]) | {"streamer": streamer}
    result: dict[str, object] = {}

    def work() -> None:
        try:
            with lock if lock is not None else contextlib.nullcontext():
                if check is not None:
                    check(role)
                if stopped():
                    raise Halted("generation was called off before it started")
                _seed(options)
                result["ids"] = stack.generate(role, batch.input_ids, batch.attention_mask, **kwargs)
        except BaseException as exc:  # surfaced in the consuming thread below
            result["error"] = exc
            streamer.end()

    worker = threading.Thread(target=work, name=f"generate-{role}", daemon=True)
    worker.start()
    try:
        emitted = yield from emit_until_stop(streamer, options.stop)
    finally:
        cancel.set()
    worker.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    ids, stopped = response_ids(result["ids"][0, batch.input_ids.shape[1] :], stack)  # type: ignore[index]
    finish = "stop" if stopped or emitted.cut else "length"
    return Completion(emitted.text, batch.input_ids.shape[1], len(ids), finish)


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


def _kwargs(stack: RoleStack, options: GenerationOptions, halt: StopCheck | None = None, *, width: int) -> dict:
    # Generation halts at every id that ends a response, the same set rollouts and evaluation stop at.
    kwargs = options.generate_kwargs() | {"eos_token_id": sorted(stack.eos_ids())}
    if options.stop:
        # transformers stops generating as soon as a stop string appears; the text is cut afterwards.
        kwargs.update(stop_strings=list(options.stop), tokenizer=stack.tokenizer)
    if halt is not None:
        kwargs["stopping_criteria"] = _halting(halt)
    # One value for every row (it broadcasts); `width` is where the responses start.
    penalized = penalties(width, [options.frequency_penalty], [options.presence_penalty])
    if penalized is not None:
        kwargs["logits_processor"] = penalized
    return kwargs


def _halting(halt: StopCheck):
    """A StoppingCriteriaList that ends every row once `halt()` is true (asked once per generated token)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Halt(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
            return torch.full((input_ids.shape[0],), halt(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Halt()])


def _seed(options: GenerationOptions) -> None:
    if options.seed is not None and not options.greedy:
        torch.manual_seed(options.seed)


def response_ids(response: torch.Tensor, stack: RoleStack) -> tuple[torch.Tensor, bool]:
    """Response ids before the first end-of-response id (the rest is padding), and whether one was found."""
    ids, stopped = until_stop(response, stack.eos_ids(), stack.tokenizer.pad_token_id)
    return (ids[:-1] if stopped else ids), stopped
