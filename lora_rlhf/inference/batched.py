"""One `generate` for many rows, each with its own adapter, budget, stop strings, halt and stream (issue 15).

PEFT's mixed-adapter batches (`generate(..., adapter_names=[...])`, "__base__" for the bare model) run
every row of one forward under its own adapter; they need the model in inference mode and adapters not
merged, which is how `RoleStack.generate` and the registry use it. What `generate` cannot do per row is
done by one stopping criterion (`_Rows`) that, after every token, records each row's token, ends the row at
its own budget, stop string or halt (a per-row bool tensor: the other rows go on), streams its text, and
takes its log-probs. The sampling options (greedy or temperature/top_p/top_k, seed) are one per batch:
callers group rows by `sampling_key`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Sequence

import torch

from lora_rlhf.inference.generation import Completion, StopCheck, TokenLogprob, cut_at_stop, response_ids
from lora_rlhf.inference.options import GenerationOptions
from lora_rlhf.inference.penalties import penalties
from lora_rlhf.models.roles import BASE, RoleStack

# PEFT's name for "no adapter" in a mixed batch (peft/tuners/lora/layer.py, _mixed_batch_forward).
PEFT_BASE = "__base__"
# JSON has no -inf: a token top_p removed is reported with this log-prob (as vLLM does).
_FLOOR_LOGPROB = -9999.0


@dataclasses.dataclass
class Row:
    """One response to generate: `role` ("base" = bare model) answering the rendered prompt `text`."""

    role: str
    text: str
    options: GenerationOptions
    halt: StopCheck | None = None
    # Alternatives to report per token (0 = only the chosen token's log-prob); None = no log-probs.
    logprobs: int | None = None
    # Called with each new piece of text as it is generated (stop strings held back by the caller).
    on_text: Callable[[str], None] | None = None


def sampling_key(row: Row, group: Hashable = None) -> Hashable:
    """Rows with equal keys can share one `generate`: same decoding (greedy, or the same temperature/top_p/top_k/
    repetition penalty). A seeded sampled row also needs its own random stream: its key holds `group` (its request),
    so that it is only batched with rows of the same request, all drawn after `torch.manual_seed(seed)`."""
    o = row.options
    if o.greedy:
        return ("greedy", o.repetition_penalty)
    seeded = (o.seed, group) if o.seed is not None else None
    return ("sample", o.temperature, o.top_p, o.top_k, o.repetition_penalty, seeded)


@torch.no_grad()
def generate_rows(stack: RoleStack, rows: Sequence[Row]) -> list[Completion]:
    """Each row's Completion from one left-padded `generate`; rows must share `sampling_key` (the first row's
    options decide). Roles must exist (the caller holds the lock that keeps them attached)."""
    batch = stack.tokenizer([r.text for r in rows], return_tensors="pt", padding=True, add_special_tokens=False)
    batch = batch.to(stack.device)
    width = batch.input_ids.shape[1]
    tracker = _Rows(stack, rows, width)
    kwargs = _generate_kwargs(stack, rows, tracker, width)
    options = rows[0].options
    if options.seed is not None and not options.greedy:
        torch.manual_seed(options.seed)
    role, adapter_names = _adapters(stack, rows)
    if adapter_names is not None:
        kwargs["adapter_names"] = adapter_names
    out = stack.generate(role, batch.input_ids, batch.attention_mask, **kwargs)
    return [tracker.completion(i, out[i], int(mask.sum())) for i, mask in enumerate(batch.attention_mask)]


def _generate_kwargs(stack: RoleStack, rows: Sequence[Row], tracker: _Rows, width: int) -> dict:
    """The batch's decoding (models/sequences.sampling_kwargs via GenerationOptions) for the longest budget, the
    end ids, the per-row criterion, and the per-row penalties then the log-prob capture as logits processors."""
    budget = max(r.options.max_new_tokens for r in rows)
    kwargs = dataclasses.replace(rows[0].options, max_new_tokens=budget, stop=[]).generate_kwargs()
    kwargs |= {"eos_token_id": sorted(stack.eos_ids()), "stopping_criteria": tracker.criteria()}
    frequency = [r.options.frequency_penalty for r in rows]
    processors = penalties(width, frequency, [r.options.presence_penalty for r in rows]) or []
    if any(r.logprobs is not None for r in rows):  # after the penalties: the log-probs see the penalized logits
        processors += tracker.capture()
    if processors:
        from transformers import LogitsProcessorList

        kwargs["logits_processor"] = LogitsProcessorList(processors)
    return kwargs


def _adapters(stack: RoleStack, rows: Sequence[Row]) -> tuple[str, list[str] | None]:
    """The role `RoleStack.generate` switches to, and PEFT's per-row adapter names when the rows mix adapters."""
    roles = [stack.resolve(r.role) for r in rows]
    if len(set(roles)) == 1:
        return roles[0], None
    # Any adapter may be active (adapter_names overrides it per row), but not "base": that disables every adapter.
    active = next(r for r in roles if r != BASE)
    return active, [PEFT_BASE if r == BASE else r for r in roles]


@dataclasses.dataclass
class _State:
    ids: list[int] = dataclasses.field(default_factory=list)  # the response so far, without its end id
    steps: int = 0  # tokens generate gave the row before it was done, its end id included
    text: str = ""  # decoded `ids`, while it is needed (stop strings or streaming)
    sent: int = 0  # characters of `text` already given to on_text
    finish: str | None = None  # "stop" or "length" once the row is done
    logprobs: list[TokenLogprob] = dataclasses.field(default_factory=list)


class _Rows:
    """Per-row bookkeeping of one batched `generate`, driven by its stopping criterion (once per token)."""

    def __init__(self, stack: RoleStack, rows: Sequence[Row], width: int) -> None:
        self.stack, self.rows, self.width = stack, rows, width
        self.eos = stack.eos_ids()
        self.states = [_State() for _ in rows]
        self.scores: torch.Tensor | None = None  # the last step's scores, before temperature/top-k/top-p

    def criteria(self):
        from transformers import StoppingCriteria, StoppingCriteriaList

        rows = self

        class _PerRow(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
                return rows.step(input_ids[:, -1])

        return StoppingCriteriaList([_PerRow()])

    def capture(self):
        """A logits processor that keeps each step's scores for the log-probs (it runs before the sampling warpers,
        which `_warped` applies with transformers' own classes)."""
        from transformers import LogitsProcessor, LogitsProcessorList

        rows = self

        class _Capture(LogitsProcessor):
            def __call__(self, input_ids, scores):
                rows.scores = scores
                return scores

        return LogitsProcessorList([_Capture()])

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B,) the token each row just got -> (B,) bool: the row is done (generate pads it from now on)."""
        logprobs = self._logprobs(tokens) if self.scores is not None else None
        for i, token in enumerate(tokens.tolist()):
            state, row = self.states[i], self.rows[i]
            if state.finish is not None:
                continue
            state.steps += 1
            if token in self.eos:
                state.finish = "stop"
                continue
            state.ids.append(token)
            if logprobs is not None and row.logprobs is not None:
                state.logprobs.append(logprobs(i, token, row.logprobs))
            self._advance(state, row)
        return torch.tensor([s.finish is not None for s in self.states], device=tokens.device)

    def _advance(self, state: _State, row: Row) -> None:
        if row.options.stop or row.on_text is not None:
            state.text = self.stack.tokenizer.decode(state.ids, skip_special_tokens=True)
            # The raw text goes out; the stream's reader cuts it at a stop string (generation.emit_until_stop).
            if row.on_text is not None and not state.text.endswith("\ufffd"):  # a character still incomplete
                self._send(state, row, state.text)
            if cut_at_stop(state.text, row.options.stop)[1]:
                state.finish = "stop"
                return
        if len(state.ids) >= row.options.max_new_tokens or (row.halt is not None and row.halt()):
            state.finish = "length"

    @staticmethod
    def _send(state: _State, row: Row, text: str) -> None:
        if len(text) > state.sent:
            row.on_text(text[state.sent :])
            state.sent = len(text)

    def _logprobs(self, tokens: torch.Tensor) -> Callable[[int, int, int], TokenLogprob]:
        logp = torch.log_softmax(self._warped(), dim=-1)
        logp = torch.nan_to_num(logp, neginf=_FLOOR_LOGPROB).clamp(min=_FLOOR_LOGPROB)

        def of(i: int, token: int, top: int) -> TokenLogprob:
            values, ids = logp[i].topk(top) if top else (logp[i, :0], logp[i, :0].long())
            return TokenLogprob(token, float(logp[i, token]), list(zip(ids.tolist(), values.tolist(), strict=True)))

        return of

    def _warped(self) -> torch.Tensor:
        """The scores the token was drawn from: the logits after temperature, top-k and top-p (greedy: the logits),
        through transformers' own warpers in generate's order."""
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        scores, options = self.scores.clone(), self.rows[0].options
        if options.greedy:
            return scores
        scores = TemperatureLogitsWarper(options.temperature)(None, scores)
        if options.top_k:
            scores = TopKLogitsWarper(options.top_k)(None, scores)
        if options.top_p < 1.0:
            scores = TopPLogitsWarper(options.top_p)(None, scores)
        return scores

    def completion(self, i: int, out: torch.Tensor, prompt_tokens: int) -> Completion:
        """Row i's Completion from its generated ids `out` (T + new,): what follows the row's last step is padding."""
        state, row = self.states[i], self.rows[i]
        ids, _ = response_ids(out[self.width : self.width + state.steps], self.stack)
        full = self.stack.tokenizer.decode(ids, skip_special_tokens=True)
        text, cut = cut_at_stop(full, row.options.stop)
        if row.on_text is not None:
            self._send(state, row, full)
        finish = "stop" if cut or state.finish == "stop" else "length"
        logprobs = state.logprobs if row.logprobs is not None else None
        return Completion(text, prompt_tokens, len(ids), finish, logprobs=logprobs)
