"""Where a generated response stops.

Rollouts, evaluation, best-of-N, the demo's labeler samples and inference all decode with the one engine
(models/engine.py); this module is the one place that decides

- which token ids end a response (`RoleStack.eos_ids()`: the tokenizer's EOS and the generation config's,
  since chat models add their own end-of-turn token), and
- what of a generated row is the response (up to the first stop; finished rows are padded after it).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


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
