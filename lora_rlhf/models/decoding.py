"""Sampling that stops spending compute on a row once it has stopped: a decode loop that drops finished rows.

`model.generate` decodes every row of a batch until its LAST row stops, padding the finished ones. A decoding
step on the CPU costs in proportion to its rows, and the samples the recipe draws (K per ranking prompt,
a PPO rollout, eval's samples) are mostly short under a budget that a few rows use up: on the demo, 192
eval samples had a mean of 8 of their 24 allowed tokens, so two thirds of `generate`'s decoding ran on rows
that had already stopped. This loop removes a row from the batch, and from the KV cache
(`Cache.batch_select_indices`), at its stop token: the continuous-batching idea of Orca / vLLM, for one
batch that only shrinks.

Its tokens are drawn by `models/sampling.draw`, from exactly the distribution `models/sequences.sampling_kwargs`
asks of `generate`: softmax(logits / T), truncated by top-k then top-p when asked, argmax at T = 0. And it
records what the PPO rollout needs from the sampler: each drawn token's log-prob under softmax(logits / T) and
that distribution's entropy (`models/sampling.drawn_logprobs`, what `SampledLogProbs` records inside
`generate`), so the behaviour policy's log-probs need no second forward.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable

import torch

from lora_rlhf.models.sampling import draw, drawn_logprobs

# (next ids (N, 1), attention mask (N, T), position ids (N, 1), cache) -> (N, V) logits of the next token,
# the cache extended in place.
StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, object], torch.Tensor]


@dataclasses.dataclass
class Samples:
    sequences: torch.Tensor  # (B, P + A) the prompt as given, then each row's response padded after its stop
    logprobs: torch.Tensor | None = None  # (B, A) log softmax(logits / T) of each drawn token; 0 after the stop
    entropy: torch.Tensor | None = None  # (B, A) entropy of the distribution each token was drawn from


def prunable(cache) -> bool:
    """Whether rows can be dropped from `cache` (a transformers `Cache` whose layers all select batch rows)."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(callable(getattr(layer, "batch_select_indices", None)) for layer in layers)


def sample(
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
) -> Samples:
    """Sample up to `max_new_tokens` after a prefilled batch, dropping each row at its first stop token.

    Args:
        step: runs the model one token further for the rows still decoding (see `StepFn`).
        first_logits: (B, V) logits of the token after each prompt (the prefill's last position).
        cache: the prompts' KV cache, B rows; rows are dropped from it in place when it is `prunable`.
        input_ids, attention_mask: (B, P) the prompts, padded on the left.
    Returns:
        `Samples` with (B, P + A) sequences, A the longest response (<= max_new_tokens); with `with_logprobs`,
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
            logp, h = drawn_logprobs(logits, token, temperature)
            logprobs[rows, t], entropy[rows, t] = logp.masked_fill(done, 0.0), h.masked_fill(done, 0.0)
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
        return Samples(sequences)
    return Samples(sequences, logprobs[:, :width], entropy[:, :width])


def logits_to_keep_argument(module: torch.nn.Module) -> dict[str, int]:
    """{"logits_to_keep": 1} where the forward takes it (only the last position's logits are needed)."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(module.forward).parameters else {}
