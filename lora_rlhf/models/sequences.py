"""Where a generated response stops, and how to sample from exactly the distribution the log-probs see.

Rollouts, evaluation, best-of-N, the demo's labeler samples and inference all generate with
`RoleStack.generate`; this module is the one place that decides

- which token ids end a response (`RoleStack.eos_ids()`: the tokenizer's EOS and the generation config's,
  since chat models add their own end-of-turn token),
- what of a generated row is the response (up to the first stop; `generate` pads finished rows), and
- which options make `generate` sample from softmax(logits / T) and nothing else. transformers fills
  every option left unset from the model's generation_config (top_k 50 by default; Qwen2.5 sets a
  repetition penalty of 1.05), and none of those processors is seen by the log-probs, the KL or the
  PPO ratio. So every processor is set to its neutral value unless the caller asks for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

# Logits processors a model's generation_config may switch on, each at its neutral value.
NEUTRAL_SAMPLING: dict[str, Any] = {
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "typical_p": 1.0,
    "min_p": 0.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "min_new_tokens": 0,
}
# A greedy generate warns about sampling-only flags, so it gets only the processors that act on argmax too.
_NEUTRAL_GREEDY: dict[str, Any] = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_new_tokens": 0}


def sampling_kwargs(
    temperature: float, *, top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0
) -> dict[str, Any]:
    """`generate` options for softmax(logits / temperature) (greedy when 0), nothing from generation_config.

    `top_p` < 1, `top_k` > 0 or `repetition_penalty` != 1 are applied only when asked (inference);
    training and evaluation leave them off so samples follow the distribution the log-probs measure.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return {**_NEUTRAL_GREEDY, "do_sample": False, "repetition_penalty": repetition_penalty}
    # top_k 0 is "off"; None would let transformers fill in the model's default of 50.
    return {
        **NEUTRAL_SAMPLING,
        "do_sample": True,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "repetition_penalty": repetition_penalty,
    }


def _is_stop(ids: torch.Tensor, stop_ids: Iterable[int]) -> torch.Tensor:
    return torch.isin(ids, torch.tensor(sorted(stop_ids), device=ids.device, dtype=ids.dtype))


def stop_mask(responses: torch.Tensor, stop_ids: Iterable[int]) -> torch.Tensor:
    """(B, A) generated ids -> (B, A) long mask of each response: every token up to and including the first stop.

    What follows a row's first stop is padding from batched generation, never part of the response.
    """
    is_stop = _is_stop(responses, stop_ids).long()
    stops_before = is_stop.cumsum(dim=1) - is_stop  # stop tokens strictly before column t
    return (stops_before == 0).long()


def ends_with_stop(responses: torch.Tensor, mask: torch.Tensor, stop_ids: Iterable[int]) -> torch.Tensor:
    """(B, A) ids and `stop_mask` -> (B,) bool: the response ended with a stop token (not the token budget)."""
    last = responses.gather(1, (mask.sum(dim=1, keepdim=True) - 1).clamp(min=0)).squeeze(1)
    return _is_stop(last, stop_ids) & (mask.sum(dim=1) > 0)


def until_stop(response: torch.Tensor, stop_ids: Iterable[int], pad_id: int | None) -> tuple[torch.Tensor, bool]:
    """(A,) generated ids of one row -> (ids up to and including the first stop, whether a stop was found).

    Without a stop, trailing padding (a row that ran out of budget in a batch that ran on) is dropped.
    """
    stops = _is_stop(response, stop_ids).nonzero()
    if len(stops):
        return response[: int(stops[0]) + 1], True
    if pad_id is not None:
        keep = (response != pad_id).nonzero()
        return (response[: int(keep[-1]) + 1] if len(keep) else response[:0]), False
    return response, False
