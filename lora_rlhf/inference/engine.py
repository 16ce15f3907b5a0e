"""The decoding engine (models/engine.py) over rendered texts: `lora-rlhf generate`, `AdapterRegistry`, the server.

A row here is a rendered prompt with its role, options (temperature, top-k / top-p, penalties, seed, stop strings,
budget), halt and streaming callback; the engine tokenizes the rows it admits, cuts each response at its first stop
string, streams new text as it is generated, and returns OpenAI-shaped `Completion`s. Token drawing, the KV cache,
rows joining a running batch and leaving it at their stop are the one engine's (models/engine.py), which the
rollouts, eval and the rankings decode with too. `generate_rows` decodes a fixed set of rows (`lora-rlhf generate`
and `AdapterRegistry` through `generate_texts`); the server's worker (serve/batcher.py) admits rows as requests
arrive. A cache whose layers are not plain `DynamicLayer`s (sliding windows, recurrent states) cannot be merged:
new rows then wait until the batch has drained (`can_admit`), as one `generate` would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Sequence

import torch

from lora_rlhf.inference.generation import Completion, Halted, StopCheck, cut_at_stop
from lora_rlhf.inference.options import GenerationOptions
from lora_rlhf.models.engine import Engine, Live
from lora_rlhf.models.roles import RoleStack


@dataclasses.dataclass
class Row:
    """One response to generate: `role` ("base" = bare model) answering the rendered prompt `text`."""

    role: str
    text: str
    options: GenerationOptions
    halt: StopCheck | None = None  # asked after every token: True ends the row there ("length")
    # Alternatives to report per token (0 = only the chosen token's log-prob); None = no log-probs.
    logprobs: int | None = None
    # Called with each new piece of text as it is generated (stop strings held back by the caller).
    on_text: Callable[[str], None] | None = None


@torch.no_grad()
def generate_rows(stack: RoleStack, rows: Sequence[Row]) -> list[Completion]:
    """Each row's Completion, the rows decoded together as one batch (roles must be attached)."""
    engine = DecodeEngine(stack)
    engine.admit(rows, range(len(rows)))
    done: dict[Hashable, Completion] = {}
    while not engine.idle:
        done.update(engine.step())
    return [done[i] for i in range(len(rows))]


def generate_texts(
    stack: RoleStack, role: str, texts: Sequence[str], options: GenerationOptions, *, halt: StopCheck | None = None
) -> list[Completion]:
    """Responses of `role` to already rendered prompt `texts`, decoded together (`generate_rows`); response k of
    a seeded call draws from the stream of choice k (`GenerationOptions.for_choice`), as the server's n choices do.

    `halt` is asked after every token; once it returns True the responses end there with finish_reason
    "length" (a client that left, a time limit, a server shutting down). True before the first token, it raises
    Halted instead.
    """
    if halt is not None and halt():
        raise Halted("generation was called off before it started")
    return generate_rows(stack, [Row(role, t, options.for_choice(k), halt) for k, t in enumerate(texts)])


class DecodeEngine(Engine):
    """The engine's live rows and KV cache for rendered texts; `admit` adds rows, `step` decodes one token of each
    and returns the Completions of the rows that ended."""

    def __init__(self, stack: RoleStack) -> None:
        super().__init__(stack)

    @torch.no_grad()
    def admit(self, rows: Sequence[Row], tickets: Sequence[Hashable]) -> None:
        """Prefill `rows` (rendered prompts, roles attached) and add them to the batch (see `can_admit`)."""
        if not rows:
            return
        batch = self.stack.tokenizer(
            [r.text for r in rows], return_tensors="pt", padding=True, add_special_tokens=False
        )
        device = self.stack.device
        self.admit_ids(rows, tickets, batch.input_ids.to(device), batch.attention_mask.to(device))

    @torch.no_grad()
    def step(self) -> list[tuple[Hashable, Completion]]:
        """One token for every live row; (ticket, Completion) of each row that ended, and one forward for the rest."""
        return [(ticket, self._completion(live)) for ticket, live in super().step()]

    def _after_token(self, live: Live) -> str | None:
        row = live.row
        if row.options.stop or row.on_text is not None:
            live.text = self.stack.tokenizer.decode(live.ids, skip_special_tokens=True)
            # The raw text goes out; the stream's reader cuts it at a stop string (generation.emit_until_stop).
            if row.on_text is not None and not live.text.endswith("\ufffd"):  # a character still incomplete
                _send(live, live.text)
            if cut_at_stop(live.text, row.options.stop)[1]:
                return "stop"
        if super()._after_token(live) or (row.halt is not None and row.halt()):
            return "length"
        return None

    def _completion(self, live: Live) -> Completion:
        full = self.stack.tokenizer.decode(live.ids, skip_special_tokens=True)
        text, cut = cut_at_stop(full, live.row.options.stop)
        if live.row.on_text is not None:
            _send(live, full)
        finish = "stop" if cut or live.finish == "stop" else "length"
        logprobs = live.logprobs if live.row.logprobs is not None else None
        return Completion(text, len(live.prompt), len(live.ids), finish, logprobs=logprobs)


def _send(live: Live, text: str) -> None:
    if len(text) > live.sent:
        live.row.on_text(text[live.sent :])
        live.sent = len(text)
