"""Sampling that stops spending compute on a row once it has stopped: a decode loop that drops finished rows.

`model.generate` decodes every row of a batch until its LAST row stops, padding the finished ones. A decoding
step on the CPU costs in proportion to its rows, and the samples the recipe draws (K per ranking prompt,
a PPO rollout, eval's samples) are mostly short under a budget that a few rows use up: on the demo, 192
eval samples had a mean of 8 of their 24 allowed tokens, so two thirds of `generate`'s decoding ran on rows
that had already stopped. This loop removes a row from the batch, and from the KV cache
(`Cache.batch_select_indices`), at its stop token: the continuous-batching idea of Orca / vLLM, for one
batch that only shrinks.

It draws from exactly the distribution `models/sequences.sampling_kwargs` asks of `generate`:
softmax(logits / T), truncated by top-k then top-p when asked (transformers' own warpers, in generate's
order), argmax at T = 0. And it records what the PPO rollout needs from the sampler: each drawn token's
log-prob under softmax(logits / T) and that distribution's entropy (what `SampledLogProbs` records inside
`generate`), so the behaviour policy's log-probs need no second forward.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable

import torch
from transformers import TopKLogitsWarper, TopPLogitsWarper

# (next ids (N, 1), attention mask (N, T), position ids (N, 1), cache) -> (N, V) logits of the next token,
# the cache extended in place.
StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, object], torch.Tensor]


@dataclasses.dataclass
class Decoded:
    sequences: torch.Tensor  # (B, P + A) the prompt as given, then each row's response padded after its stop
    logprobs: torch.Tensor | None = None  # (B, A) log softmax(logits / T) of each drawn token; 0 after the stop
    entropy: torch.Tensor | None = None  # (B, A) entropy of the distribution each token was drawn from


def sampling_logprobs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(N, V) logits -> (N, V) float32 log softmax(logits / T): the distribution the log-probs are measured on
    (T = 0, greedy, measures T = 1)."""
    return (logits.float() / (temperature if temperature > 0 else 1.0)).log_softmax(-1)


def draw(logits: torch.Tensor, temperature: float, *, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """(N, V) logits -> (N,) next tokens: argmax at T = 0, else a sample of softmax(logits / T) truncated to its
    top_k tokens (0: all) and then to the smallest set holding top_p of the mass (1.0: all).

    Sampled by inverting each row's cumulative distribution (in float64, so no token's mass is lost to
    rounding), which on the CPU takes a tenth of `torch.multinomial`'s time over a 49k-token vocabulary
    (0.05 s vs 0.48 s for 384 rows): multinomial was a third of eval's decoding. A token of probability 0
    (cut by top-k / top-p) is never drawn: the search returns the first index whose cumulative mass exceeds u.
    """
    if temperature == 0:
        return logits.argmax(-1)
    scores = logits.float() / temperature
    if top_k > 0:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return inverse_cdf(scores, torch.rand((scores.shape[0], 1), dtype=torch.float64, device=scores.device))


def inverse_cdf(scores: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(N, V) scores (-inf for tokens cut) and (N, 1) float64 uniforms in [0, 1) -> (N,) the token of each row
    where its cumulative softmax(scores) first exceeds u: a sample of softmax(scores) (see `draw`)."""
    cdf = scores.softmax(-1).double().cumsum(-1)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(1).clamp(max=cdf.shape[1] - 1)


def prunable(cache) -> bool:
    """Whether rows can be dropped from `cache` (a transformers `Cache` whose layers all select batch rows)."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(callable(getattr(layer, "batch_select_indices", None)) for layer in layers)


def decode(
    step: StepFn,
    first_logits: torch.Tensor,
    cache,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    stop_ids: Iterable[int],
    pad_id: int,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    with_logprobs: bool = False,
) -> Decoded:
    """Decode up to `max_new_tokens` after a prefilled batch, dropping each row at its first stop token.

    Args:
        step: runs the model one token further for the rows still decoding (see `StepFn`).
        first_logits: (B, V) logits of the token after each prompt (the prefill's last position).
        cache: the prompts' KV cache, B rows; rows are dropped from it in place when it is `prunable`.
        input_ids, attention_mask: (B, P) the prompts, padded on the left.
    Returns:
        `Decoded` with (B, P + A) sequences, A the longest response (<= max_new_tokens); with `with_logprobs`,
        (B, A) log-probs and entropies too.
    """
    b, device = input_ids.shape[0], input_ids.device
    stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    tokens = torch.full((b, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((b, max_new_tokens), device=device) if with_logprobs else None
    entropy = torch.zeros((b, max_new_tokens), device=device) if with_logprobs else None
    rows = torch.arange(b, device=device)  # the original index of each row still decoding
    mask = attention_mask
    positions = attention_mask.long().sum(-1, keepdim=True)  # (N, 1) the next token's position (pads not counted)
    drop = prunable(cache)
    done = torch.zeros(b, dtype=torch.bool, device=device)  # per row still in the batch: it has stopped
    logits, width = first_logits, 0
    for t in range(max_new_tokens):
        # A row kept in the batch after its stop (a cache that cannot drop rows) draws padding, as in generate.
        token = draw(logits, temperature, top_k=top_k, top_p=top_p).masked_fill(done, pad_id)
        tokens[rows, t] = token
        if with_logprobs:
            logp = sampling_logprobs(logits, temperature)
            logprobs[rows, t] = logp.gather(-1, token.unsqueeze(-1)).squeeze(-1).masked_fill(done, 0.0)
            entropy[rows, t] = (-(logp.exp() * logp).sum(-1)).masked_fill(done, 0.0)
        width = t + 1
        done = done | torch.isin(token, stops)
        if t + 1 == max_new_tokens or done.all():
            break
        if drop and done.any():
            keep = (~done).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, mask, positions, token, done = rows[keep], mask[keep], positions[keep], token[keep], done[keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        logits = step(token.unsqueeze(1), mask, positions, cache)
        positions = positions + 1
    sequences = torch.cat([input_ids, tokens[:, :width]], dim=1)
    if not with_logprobs:
        return Decoded(sequences)
    return Decoded(sequences, logprobs[:, :width], entropy[:, :width])


def logits_to_keep_argument(module: torch.nn.Module) -> dict[str, int]:
    """{"logits_to_keep": 1} where the forward takes it (only the last position's logits are needed)."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(module.forward).parameters else {}
