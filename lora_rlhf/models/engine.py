"""The one decoding engine (issues 15 and 26): every response the toolkit generates is decoded here.

Rollouts, evaluation's samples, best-of-N and the demo's rankings (`sample`: one role and one set of options for
a batch), `lora-rlhf generate`, `AdapterRegistry` and the server (inference/engine.py: rendered texts, options,
adapter, stop strings and halt per row) all run this loop. A batch is a set of live rows over one KV cache:
`step()` draws one token for every live row (models/sampling.py: temperature, top-k / top-p, penalties, the row's
own seeded generator or torch's global one), ends the rows that are done, drops them from the batch and from the
cache (`Cache.batch_select_indices`), and runs one forward for the rest; `admit_ids` prefills new rows and merges
their KV cache into the running one, both left-padded to one width. This is the iteration-level scheduling of
Orca (Yu et al., OSDI 2022) that vLLM and TGI serve with, on transformers' own `DynamicCache`: a row stops costing
compute at its stop token, where `model.generate` decodes every row until the batch's last one stops (on the demo
most eval samples end at 8 of 24 tokens), and a request joins a running batch after one step, not one batch.

Rows of different adapters share each forward, each LoRA layer adding every row's own adapter
(`RoleStack.next_token_logits`, models/row_adapters.py); a row whose role is None runs under the adapter
`RoleStack.use` made active (`sample`). With `measure`, each drawn token's log-prob under softmax(logits / T) and
that distribution's entropy are recorded, what PPO's behaviour policy needs with no second forward; a row asking
for `logprobs` gets the reported log-probs of what its token was drawn from (`sampling.reported_logprobs`).

transformers' `generate` is not used: it stays only as the reference the tests compare this engine with
(`lora_rlhf.testing.reference`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterable, Sequence
from typing import Protocol

import torch

from lora_rlhf.models.kv_cache import distinct_prefixes, returned_cache
from lora_rlhf.models.positions import next_positions, position_ids
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.models.sampling import (
    DrawOptions,
    draw,
    draw_rows,
    drawn_logprobs,
    penalized,
    reported_logprobs,
    seeded_generator,
    warped,
)


class RowOptions(DrawOptions, Protocol):
    """How one row is drawn (`inference.GenerationOptions` is one) and how long it may run."""

    max_new_tokens: int
    seed: int | None  # a sampled row's own random stream; None: torch's global generator


class RowRequest(Protocol):
    """One row to decode (`inference.engine.Row` is one)."""

    role: str | None  # None: the adapter `RoleStack.use` made active
    options: RowOptions
    logprobs: int | None  # alternatives to report per token (0: only the chosen token's); None: no log-probs


@dataclasses.dataclass
class TokenLogprob:
    """One generated token: its log-prob and the most likely alternatives, as (token id, log-prob)."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


@dataclasses.dataclass(eq=False)
class Live:
    """One row being decoded, and what the caller gets back with it."""

    row: RowRequest
    ticket: Hashable  # the caller's handle for the row, returned with it when it ends
    prompt: torch.Tensor  # (P,) the prompt's ids, no padding
    generator: torch.Generator | None  # the row's own random stream (a seeded sampled row)
    ids: list[int] = dataclasses.field(default_factory=list)  # the response so far, without its stop id
    end: int | None = None  # the stop id that ended the row
    finish: str | None = None  # "stop" or "length" once the row is done
    logprobs: list[TokenLogprob] = dataclasses.field(default_factory=list)  # reported, when the row asks
    # With `measure`: per drawn token (its stop id included), log softmax(logits / T) of it and the entropy.
    measured: list[float] = dataclasses.field(default_factory=list)
    entropy: list[float] = dataclasses.field(default_factory=list)
    text: str = ""  # decoded `ids`, for a caller that watches the text (inference/engine.py)
    sent: int = 0  # characters of `text` already streamed


class Engine:
    """The live rows of one base and their KV cache; `admit_ids` adds rows, `step` decodes one token of each.

    Args:
        stop_ids: ids that end a row (default `stack.eos_ids()`); the stop id is drawn, then the row leaves.
        pad_id: the id fed to a finished row kept in a batch whose cache cannot drop rows (default the tokenizer's).
        measure: record each drawn token's log-prob under softmax(logits / T) and the entropy (`Live.measured`).
        trim: after rows leave, drop the cache columns that are padding in every row left (a batch rows join).
    """

    def __init__(
        self,
        stack: RoleStack,
        *,
        stop_ids: Iterable[int] | None = None,
        pad_id: int | None = None,
        measure: bool = False,
        trim: bool = True,
    ) -> None:
        self.stack = stack
        self.eos = set(stack.eos_ids() if stop_ids is None else stop_ids)
        tokenizer_pad = getattr(stack.tokenizer, "pad_token_id", None)
        self.pad_id = pad_id if pad_id is not None else tokenizer_pad if tokenizer_pad is not None else 0
        self.measure, self.trim = measure, trim
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
    def admit_ids(
        self,
        rows: Sequence[RowRequest],
        tickets: Sequence[Hashable],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        share_prompts: bool = False,
    ) -> None:
        """Prefill `rows`, (N, P) prompts padded on the LEFT, and add them to the batch (see `can_admit`).

        With `share_prompts`, rows all under the active adapter (role None) that repeat a prompt (K samples of it)
        prefill each distinct prompt once (`shared_prompt_cache`), equal to the unshared prefill up to rounding.
        """
        if not rows:
            return
        if not self.can_admit():
            raise RuntimeError("rows cannot join a batch whose KV cache cannot be merged; wait until it drains")
        device = input_ids.device
        logits, cache = self._prefill(_roles(rows), input_ids, attention_mask, share_prompts and not self.live)
        new = [
            Live(row, ticket, input_ids[i][attention_mask[i].bool()], _generator(row.options, device))
            for i, (row, ticket) in enumerate(zip(rows, tickets, strict=True))
        ]
        positions = next_positions(attention_mask)
        if not self.live:
            self._cache, self._mask, self._positions, self._logits = cache, attention_mask, positions, logits
            self._ids = input_ids if cache is None else None
        else:
            self._mask = _merge(self._cache, self._mask, cache, attention_mask)
            self._positions = torch.cat([self._positions, positions])
            self._logits = torch.cat([self._logits, logits])
        self.live.extend(new)

    def _prefill(self, roles: list[str] | None, ids: torch.Tensor, mask: torch.Tensor, share: bool):
        """(N, V) logits of each row's first response token and the rows' KV cache."""
        cache = shared_prompt_cache(self.stack, ids, mask) if share and roles is None else None
        if cache is not None:  # only each row's last prompt token runs, on the shared cache
            last = next_positions(mask) - 1
            return self.stack.next_token_logits(None, ids[:, -1:], mask, last, cache)
        positions = position_ids(mask, as_generate=True)  # as generate's, pads masked anyway
        return self.stack.next_token_logits(roles, ids, mask, positions)

    # ----------------------------------------------------------------------- steps
    @torch.no_grad()
    def step(self) -> list[tuple[Hashable, Live]]:
        """One token for every live row; (ticket, Live) of each row that ended, and one forward for the rest."""
        if not self.live:
            return []
        kept = [live.finish is not None for live in self.live]  # rows done but kept (a cache that cannot drop rows)
        tokens, scores = self._draw()
        if any(kept):
            tokens = tokens.masked_fill(torch.tensor(kept, device=tokens.device), self.pad_id)
        measured = self._measured(tokens) if self.measure else None
        wanted = [i for i, live in enumerate(self.live) if live.row.logprobs is not None and not kept[i]]
        logp = dict(zip(wanted, reported_logprobs(scores[wanted]), strict=True)) if wanted else {}
        ended = []
        for i, (live, token) in enumerate(zip(self.live, tokens.tolist(), strict=True)):
            if kept[i]:
                continue
            if measured is not None:
                live.measured.append(measured[0][i])
                live.entropy.append(measured[1][i])
            self._advance(live, token, logp.get(i))
            if live.finish is not None:
                ended.append(live)
        keep = [i for i, live in enumerate(self.live) if live.finish is None]
        if keep and len(keep) < len(self.live) and not _droppable(self._cache):
            keep = list(range(len(self.live)))  # finished rows stay in the batch, drawing padding
        if len(keep) < len(self.live) or not keep:
            self._select(keep)
        if self.live:
            self._forward(tokens[keep])
        return [(live.ticket, live) for live in ended]

    def abort(self) -> list[Hashable]:
        """Drop every live row (after a failed forward); their tickets."""
        tickets = [live.ticket for live in self.live if live.finish is None]
        self.live = []
        self._cache = self._mask = self._positions = self._logits = self._ids = None
        return tickets

    def _draw(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N,) the live rows' next tokens and the (N, V) scores they were drawn from (None where not needed).

        One set of options, no penalty, no seeded row and no reported log-probs (a rollout's batch) take
        `sampling.draw` over the whole batch: the same tokens and the same use of torch's global generator as
        the per-row rule (`tests/test_sampling.py`), without its copies of the (N, V) scores.
        """
        options = [live.row.options for live in self.live]
        first = options[0]
        if (
            all(o == first for o in options)
            and first.repetition_penalty == 1.0
            and not first.frequency_penalty
            and not first.presence_penalty
            and all(live.generator is None and live.row.logprobs is None for live in self.live)
        ):
            return draw(self._logits, first.temperature, top_k=first.top_k, top_p=first.top_p), None
        prompts, responses = [live.prompt for live in self.live], [live.ids for live in self.live]
        scores = warped(penalized(self._logits, options, prompts, responses), options)
        return draw_rows(scores, options, [live.generator for live in self.live]), scores

    def _measured(self, tokens: torch.Tensor) -> tuple[list[float], list[float]]:
        """Per live row, log softmax(logits / T) of its drawn token and that distribution's entropy (T = 0: 1)."""
        temperatures = [live.row.options.temperature for live in self.live]
        if all(t == temperatures[0] for t in temperatures):
            logp, h = drawn_logprobs(self._logits, tokens, temperatures[0])
            return logp.tolist(), h.tolist()
        logp, h = [0.0] * len(tokens), [0.0] * len(tokens)
        for t in set(temperatures):
            index = [i for i, ti in enumerate(temperatures) if ti == t]
            got = drawn_logprobs(self._logits[index], tokens[index], t)
            for i, lp, e in zip(index, *(x.tolist() for x in got), strict=True):
                logp[i], h[i] = lp, e
        return logp, h

    def _advance(self, live: Live, token: int, logp: torch.Tensor | None) -> None:
        if token in self.eos:
            live.end, live.finish = token, "stop"
            return
        live.ids.append(token)
        if logp is not None:
            values, ids = logp.topk(live.row.logprobs) if live.row.logprobs else (logp[:0], logp[:0].long())
            top = list(zip(ids.tolist(), values.tolist(), strict=True))
            live.logprobs.append(TokenLogprob(token, float(logp[token]), top))
        live.finish = self._after_token(live)

    def _after_token(self, live: Live) -> str | None:
        """Whether `live` ends after the token just appended to `live.ids`: "length" at its budget, else None."""
        return "length" if len(live.ids) >= live.row.options.max_new_tokens else None

    def _select(self, keep: list[int]) -> None:
        """Keep only rows `keep` (indices into `live`), in the cache too; with `trim`, then drop the columns no row
        attends."""
        if not keep:
            self.abort()
            return
        index = torch.tensor(keep, dtype=torch.long, device=self._mask.device)
        self.live = [self.live[i] for i in keep]
        self._mask, self._positions = self._mask[index], self._positions[index]
        if self._cache is not None:
            self._cache.batch_select_indices(index)
        else:
            self._ids = self._ids[index]
        first = int(self._mask.any(0).long().argmax())  # columns before it are padding in every row
        if self.trim and first and _mergeable(self._cache):
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
            self._mask = self._mask[:, first:]

    def _forward(self, tokens: torch.Tensor) -> None:
        """Run the live rows one token further: (N,) their new tokens."""
        new = tokens[:, None]
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(new), 1))], dim=1)
        roles = _roles([live.row for live in self.live])
        if self._cache is not None:
            step = self.stack.next_token_logits(roles, new, self._mask, self._positions, self._cache)
            self._logits, self._cache = step
        else:  # no cache to extend: the whole sequence again
            self._ids = torch.cat([self._ids, new], dim=1)
            positions = position_ids(self._mask, as_generate=True)
            self._logits, _ = self.stack.next_token_logits(roles, self._ids, self._mask, positions)
        self._positions = self._positions + 1


# --------------------------------------------------------------- one role, one set of options: rollouts, eval
@dataclasses.dataclass
class Samples:
    sequences: torch.Tensor  # (B, P + A) the prompt as given, then each row's response padded after its stop
    logprobs: torch.Tensor | None = None  # (B, A) log softmax(logits / T) of each drawn token; 0 after the stop
    entropy: torch.Tensor | None = None  # (B, A) entropy of the distribution each token was drawn from


@dataclasses.dataclass(frozen=True)
class _BatchOptions:
    """`sample`'s options, the same for every row: no penalty, no seed (torch's global generator)."""

    max_new_tokens: int
    temperature: float
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None


@dataclasses.dataclass(frozen=True)
class _BatchRow:
    options: _BatchOptions
    role: str | None = None  # the adapter `sample` made active
    logprobs: int | None = None


@torch.no_grad()
def sample(
    stack: RoleStack,
    role: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    with_logprobs: bool = False,
    stop_ids: Iterable[int] | None = None,
    pad_id: int | None = None,
    share_prompts: bool = True,
) -> Samples:
    """Sample `role`'s responses (greedy at T = 0), each row leaving the batch at its stop token.

    Rollouts, eval's samples, best-of-N and the demo's rankings: one role and one set of options for the batch,
    tokens drawn from softmax(logits / T) truncated by top-k then top-p, one float64 uniform per live row in row
    order from torch's global generator (`sampling.draw`), so `torch.manual_seed` fixes the samples. Each distinct
    prompt is prefilled once (`share_prompts`); a 4-bit base is dequantized once for the call where asked and the
    copy fits (`RoleStack.dequantized_base`). Stops at `stop_ids` (default `eos_ids()`); pads with `pad_id`
    (default the tokenizer's). Pad `input_ids` on the left.

    Returns:
        `Samples` with (B, P + A) sequences, A the longest response (<= max_new_tokens, its stop id included);
        with `with_logprobs`, the (B, A) log-probs of the drawn tokens under softmax(logits / T) (T = 0: T = 1)
        and the entropies, 0 after each row's stop.
    """
    rows = input_ids.shape[0]
    pad = stack.tokenizer.pad_token_id if pad_id is None else pad_id
    if max_new_tokens <= 0:
        empty = input_ids.new_zeros((rows, 0), dtype=torch.float32)
        return Samples(input_ids, empty, empty.clone()) if with_logprobs else Samples(input_ids)
    request = _BatchRow(_BatchOptions(max_new_tokens, temperature, top_k, top_p))
    tokens = input_ids.shape[1] + max_new_tokens
    with stack.use(role), stack.generation_mode(), stack.dequantized_base(rows, tokens):
        # The batch only shrinks: no column is trimmed, so each row's attention spans what it did before.
        engine = Engine(stack, stop_ids=stop_ids, pad_id=pad, measure=with_logprobs, trim=False)
        engine.admit_ids([request] * rows, range(rows), input_ids, attention_mask, share_prompts=share_prompts)
        done: dict[Hashable, Live] = {}
        while not engine.idle:
            done.update(engine.step())
    return _samples([done[i] for i in range(rows)], input_ids, pad, with_logprobs)


def _samples(rows: list[Live], input_ids: torch.Tensor, pad: int, with_logprobs: bool) -> Samples:
    """`sample`'s finished rows as one (B, P + A) batch, each response padded after its stop id."""
    responses = [live.ids + ([live.end] if live.end is not None else []) for live in rows]
    width, device = max(len(r) for r in responses), input_ids.device
    tokens = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    logprobs = torch.zeros((len(rows), width), device=device) if with_logprobs else None
    entropy = torch.zeros((len(rows), width), device=device) if with_logprobs else None
    for i, (live, response) in enumerate(zip(rows, responses, strict=True)):
        tokens[i, : len(response)] = torch.tensor(response, dtype=torch.long)
        if with_logprobs:
            logprobs[i, : len(response)] = torch.tensor(live.measured, dtype=torch.float32)
            entropy[i, : len(response)] = torch.tensor(live.entropy, dtype=torch.float32)
    return Samples(torch.cat([input_ids, tokens], dim=1), logprobs, entropy)


# ---------------------------------------------------------------------------------- the KV cache
def shared_prompt_cache(stack: RoleStack, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """The KV cache of every prompt but its last token under the active adapter, each DISTINCT prompt encoded once;
    None if no prompt repeats.

    K samples of one prompt (the rankings' K, best-of-N's N) arrive as K equal rows: prefilling them K times costs
    as much as decoding on the CPU. Only each row's last prompt token then runs on top of this cache, so the samples
    are those of the unshared prefill (up to float rounding).
    """
    if input_ids.shape[0] < 2 or input_ids.shape[1] < 2:
        return None
    shared = distinct_prefixes(input_ids, attention_mask, input_ids.shape[1] - 1)
    if shared is None:
        return None
    ids, mask, inverse = shared
    # Positions as generate computes them for a left-padded batch (pads at 1, masked out anyway).
    positions = position_ids(mask, as_generate=True)
    out = stack.causal_lm().base_model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    cache = returned_cache(out)
    if cache is None:
        return None
    cache.batch_select_indices(inverse)  # (distinct, heads, P-1, d) -> (rows, heads, P-1, d)
    return cache


def _droppable(cache) -> bool:
    """Whether rows can leave the batch: no cache (the sequence runs whole), or a transformers `Cache` whose layers
    all select batch rows."""
    if cache is None:
        return True
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(callable(getattr(layer, "batch_select_indices", None)) for layer in layers)


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


def _roles(rows: Sequence[RowRequest]) -> list[str] | None:
    """The rows' roles for `next_token_logits`; None when every row runs under the active adapter."""
    roles = [row.role for row in rows]
    if all(r is None for r in roles):
        return None
    if any(r is None for r in roles):
        raise ValueError("rows under the active adapter (role None) cannot share a batch with rows of named roles")
    return roles


def _generator(options: RowOptions, device: torch.device) -> torch.Generator | None:
    """A sampled row's own random stream when it has a seed, so its answer does not depend on its batch."""
    return None if options.temperature == 0 else seeded_generator(options.seed, device)
