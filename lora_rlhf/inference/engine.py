"""Continuous batching: rows join a running decode at any step and leave it at their own stop (issue 15).

Serving a batch with one `generate` makes a request that arrives while the batch runs wait for all of it,
and keeps every row in the batch until its longest row ends. Here a batch is a set of live rows over one KV
cache: `step()` picks one token for every live row (each with its own adapter, options, penalties, seed,
stop strings, budget and halt; the token drawn by models/sampling.py), ends the rows that are done, and runs
one forward for the rest; `admit(rows)` prefills new rows and merges their KV cache into the running one, both
left-padded to one width, so a request waits for one step rather than one batch. This is the iteration-level
scheduling of Orca (Yu et al., OSDI 2022) that vLLM and TGI serve with, on transformers' own `DynamicCache`.

This is the one decoding engine of inference: `generate_rows` decodes a fixed set of rows this way (`lora-rlhf
generate` and `AdapterRegistry` through `generate_texts`); the server's worker (serve/batcher.py) admits rows as
requests arrive. transformers' `generate` stays only as the reference the tests compare it with. Rows of
different adapters share each forward, each LoRA layer adding every row's own adapter
(`RoleStack.next_token_logits`, models/row_adapters.py). A cache whose layers are not plain `DynamicLayer`s
(sliding windows, recurrent states) cannot be merged: new rows then wait until the batch has drained
(`can_admit`), as one `generate` would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Sequence

import torch

from lora_rlhf.inference.generation import Completion, Halted, StopCheck, TokenLogprob, cut_at_stop
from lora_rlhf.inference.options import GenerationOptions
from lora_rlhf.models.positions import position_ids
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.models.sampling import draw_rows, penalized, reported_logprobs, seeded_generator, warped


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


@dataclasses.dataclass(eq=False)
class Live:
    """One row being decoded, and what the caller gets back with it."""

    row: Row
    ticket: Hashable  # the caller's handle for the row, returned with its Completion
    prompt: torch.Tensor  # (P,) the prompt's ids, no padding
    generator: torch.Generator | None  # the row's own random stream (a seeded sampled row)
    ids: list[int] = dataclasses.field(default_factory=list)  # the response so far, without its end id
    text: str = ""  # decoded `ids`, while it is needed (stop strings or streaming)
    sent: int = 0  # characters of `text` already given to on_text
    finish: str | None = None  # "stop" or "length" once the row is done
    logprobs: list[TokenLogprob] = dataclasses.field(default_factory=list)


class DecodeEngine:
    """The live rows of one base and their KV cache; `admit` adds rows, `step` decodes one token of each."""

    def __init__(self, stack: RoleStack) -> None:
        self.stack = stack
        self.eos = stack.eos_ids()
        self.live: list[Live] = []
        self._cache = None  # the live rows' KV cache (None: a model without one, see `_ids`)
        self._mask: torch.Tensor | None = None  # (N, T) attention mask over the cached columns
        self._positions: torch.Tensor | None = None  # (N, 1) the position of each row's next input
        self._logits: torch.Tensor | None = None  # (N, V) logits of each row's next token
        self._ids: torch.Tensor | None = None  # (N, T) every id so far, only for a model that returns no cache

    @property
    def idle(self) -> bool:
        return not self.live

    def can_admit(self) -> bool:
        """Whether rows can join now: always into an empty batch, else only into a cache that can be merged."""
        return not self.live or _mergeable(self._cache)

    # ------------------------------------------------------------------ admission
    @torch.no_grad()
    def admit(self, rows: Sequence[Row], tickets: Sequence[Hashable]) -> None:
        """Prefill `rows` (rendered prompts, roles attached) and add them to the batch (see `can_admit`)."""
        if not rows:
            return
        if not self.can_admit():
            raise RuntimeError("rows cannot join a batch whose KV cache cannot be merged; wait until it drains")
        tokenizer, device = self.stack.tokenizer, self.stack.device
        batch = tokenizer([r.text for r in rows], return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
        positions = position_ids(mask, as_generate=True)  # as generate's, pads masked anyway
        logits, cache = self.stack.next_token_logits([r.role for r in rows], ids, mask, positions)
        new = [
            Live(row, ticket, ids[i][mask[i].bool()], _generator(row.options, device))
            for i, (row, ticket) in enumerate(zip(rows, tickets, strict=True))
        ]
        next_positions = mask.long().sum(-1, keepdim=True)
        if not self.live:
            self._cache, self._mask, self._positions, self._logits = cache, mask, next_positions, logits
            self._ids = ids if cache is None else None
        else:
            self._mask = _merge(self._cache, self._mask, cache, mask)
            self._positions = torch.cat([self._positions, next_positions])
            self._logits = torch.cat([self._logits, logits])
        self.live.extend(new)

    # ----------------------------------------------------------------------- steps
    @torch.no_grad()
    def step(self) -> list[tuple[Hashable, Completion]]:
        """One token for every live row; (ticket, Completion) of each row that ended, and one forward for the rest."""
        if not self.live:
            return []
        options = [live.row.options for live in self.live]
        prompts, responses = [live.prompt for live in self.live], [live.ids for live in self.live]
        scores = warped(penalized(self._logits, options, prompts, responses), options)
        tokens = draw_rows(scores, options, [live.generator for live in self.live])
        wanted = [i for i, live in enumerate(self.live) if live.row.logprobs is not None]
        logp = dict(zip(wanted, reported_logprobs(scores[wanted]), strict=True)) if wanted else {}
        for i, (live, token) in enumerate(zip(self.live, tokens.tolist(), strict=True)):
            self._advance(live, token, logp.get(i))
        ended = [live for live in self.live if live.finish is not None]
        keep = [i for i, live in enumerate(self.live) if live.finish is None]
        if ended:
            self._select(keep)
        if self.live:
            self._forward(tokens[keep])
        return [(live.ticket, self._completion(live)) for live in ended]

    def abort(self) -> list[Hashable]:
        """Drop every live row (after a failed forward); their tickets."""
        tickets = [live.ticket for live in self.live]
        self.live = []
        self._cache = self._mask = self._positions = self._logits = self._ids = None
        return tickets

    def _advance(self, live: Live, token: int, logp: torch.Tensor | None) -> None:
        row = live.row
        if token in self.eos:
            live.finish = "stop"
            return
        live.ids.append(token)
        if logp is not None:
            values, ids = logp.topk(row.logprobs) if row.logprobs else (logp[:0], logp[:0].long())
            top = list(zip(ids.tolist(), values.tolist(), strict=True))
            live.logprobs.append(TokenLogprob(token, float(logp[token]), top))
        if row.options.stop or row.on_text is not None:
            live.text = self.stack.tokenizer.decode(live.ids, skip_special_tokens=True)
            # The raw text goes out; the stream's reader cuts it at a stop string (generation.emit_until_stop).
            if row.on_text is not None and not live.text.endswith("\ufffd"):  # a character still incomplete
                _send(live, live.text)
            if cut_at_stop(live.text, row.options.stop)[1]:
                live.finish = "stop"
                return
        if len(live.ids) >= row.options.max_new_tokens or (row.halt is not None and row.halt()):
            live.finish = "length"

    def _completion(self, live: Live) -> Completion:
        full = self.stack.tokenizer.decode(live.ids, skip_special_tokens=True)
        text, cut = cut_at_stop(full, live.row.options.stop)
        if live.row.on_text is not None:
            _send(live, full)
        finish = "stop" if cut or live.finish == "stop" else "length"
        logprobs = live.logprobs if live.row.logprobs is not None else None
        return Completion(text, len(live.prompt), len(live.ids), finish, logprobs=logprobs)

    def _select(self, keep: list[int]) -> None:
        """Keep only rows `keep` (indices into `live`), in the cache too, then drop the columns no row attends."""
        index = torch.tensor(keep, dtype=torch.long, device=self._mask.device)
        self.live = [self.live[i] for i in keep]
        if not keep:
            self.abort()
            return
        self._mask, self._positions = self._mask[index], self._positions[index]
        if self._cache is not None:
            self._cache.batch_select_indices(index)
        else:
            self._ids = self._ids[index]
        first = int(self._mask.any(0).long().argmax())  # columns before it are padding in every row
        if first and _mergeable(self._cache):
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
            self._mask = self._mask[:, first:]

    def _forward(self, tokens: torch.Tensor) -> None:
        """Run the live rows one token further: (N,) their new tokens."""
        new = tokens[:, None]
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(new), 1))], dim=1)
        roles = [live.row.role for live in self.live]
        if self._cache is not None:
            step = self.stack.next_token_logits(roles, new, self._mask, self._positions, self._cache)
            self._logits, self._cache = step
        else:  # no cache to extend: the whole sequence again
            self._ids = torch.cat([self._ids, new], dim=1)
            positions = position_ids(self._mask, as_generate=True)
            self._logits, _ = self.stack.next_token_logits(roles, self._ids, self._mask, positions)
        self._positions = self._positions + 1


def _generator(options: GenerationOptions, device: torch.device) -> torch.Generator | None:
    """A sampled row's own random stream when it has a seed, so its answer does not depend on its batch."""
    return None if options.greedy else seeded_generator(options.seed, device)


def _send(live: Live, text: str) -> None:
    if len(text) > live.sent:
        live.row.on_text(text[live.sent :])
        live.sent = len(text)


def _mergeable(cache) -> bool:
    """Whether rows prefilled apart can be merged into `cache`: a transformers cache of plain DynamicLayers (keys
    and values (B, H, T, D), nothing else per row), not sliding-window or recurrent layers."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer and layer.keys is not None for layer in layers)


def _merge(cache, mask: torch.Tensor, new_cache, new_mask: torch.Tensor) -> torch.Tensor:
    """Append `new_cache`'s rows to `cache` in place, both left-padded to the wider one; the (N + M, T) mask."""
    width = max(mask.shape[1], new_mask.shape[1])
    for layer, new in zip(cache.layers, new_cache.layers, strict=True):
        layer.keys = torch.cat([_left_pad(layer.keys, width), _left_pad(new.keys, width)])
        layer.values = torch.cat([_left_pad(layer.values, width), _left_pad(new.values, width)])
    return torch.cat([_left_pad(mask, width, dim=1), _left_pad(new_mask, width, dim=1)])


def _left_pad(x: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    """`x` with zeros before its first column along `dim`, to `width` columns (keys (B, H, T, D): dim 2)."""
    missing = width - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)
