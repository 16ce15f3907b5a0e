"""The KV cache across transformers versions, and the distinct prompts whose cache several rows can share."""

from __future__ import annotations

import inspect

import torch
from torch import nn


def cache_argument(module: nn.Module) -> str:
    """The forward's name for a KV cache: `cache` in recent transformers 5.x, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def returned_cache(out):
    """The KV cache a forward returned (`cache` in recent transformers 5.x, `past_key_values` before), or None."""
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)


def distinct_prefixes(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The distinct rows of the first `width` columns of (B, T) ids and mask: (D, width) ids, (D, width) mask
    and (B,) each row's index among them; None when no two rows share their first `width` columns."""
    rows = torch.cat([input_ids[:, :width], attention_mask[:, :width].to(input_ids.dtype)], dim=1)
    distinct, inverse = torch.unique(rows, dim=0, return_inverse=True)
    if len(distinct) == len(rows):
        return None
    return distinct[:, :width], distinct[:, width:].to(attention_mask.dtype), inverse
