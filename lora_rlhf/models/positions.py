"""Positions: the ids a padded row is encoded with, the base's position limit, and the check of lengths against it.

`position_ids` is the one rule for the position of each token of a padded batch (issue 26): every forward over a
padded batch (hidden states, logits, prefills for decoding, the server's engine) takes its ids from it;
`next_positions` is the position of the token after each row, where the decoding engine goes on.

A max_length past `max_position_embeddings` was accepted without a word: learned position embeddings
(GPT-2's `wpe`) index out of range, and rotary bases (Llama, Qwen2, GPT-NeoX) run on positions they were
never trained at. Each stage calls `check_lengths` with its recipe keys as soon as it has the stack.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lora_rlhf.errors import LoraRlhfError

# Config keys of the position limit, by architecture family (Llama/Qwen/NeoX: the first; GPT-2: the second).
_LIMIT_KEYS = ("max_position_embeddings", "n_positions")
# Above this a "limit" is a placeholder, not a trained length (tokenizers without one report 1e30).
SANE_CONTEXT = 10_000_000


def position_ids(attention_mask: torch.Tensor, *, as_generate: bool = False) -> torch.Tensor:
    """(N, T) 0/1 attention mask -> (N, T) int64 position of each token, counting real tokens only.

    A left-padded row is so encoded as if it were unpadded: its first real token is at 0. Pad columns are
    masked out of attention, so what they get matters only to match a reference bit for bit:
    - by default the count clamped at 0 (left pads at 0, pads after the last real token at its position),
      as the forwards over whole sequences (hidden states, logits) use;
    - `as_generate`: 1, as transformers' `generate` fills them, for prefills that must reproduce its samples.
    """
    counted = attention_mask.long().cumsum(-1) - 1
    if as_generate:
        return counted.masked_fill(attention_mask == 0, 1)
    return counted.clamp(min=0)


def next_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, T) 0/1 attention mask -> (N, 1) int64 position of the token after each row: its count of real tokens."""
    return attention_mask.long().sum(-1, keepdim=True)


def position_limit(config: Any) -> tuple[str, int] | None:
    """(config key, value) of the most positions `config`'s architecture takes, or None where it sets none."""
    for key in _LIMIT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= SANE_CONTEXT:
            return key, value
    return None


def check_lengths(model: Any, lengths: Mapping[str, int]) -> None:
    """One line naming the first recipe key in `lengths` ({"sft.max_length": 4096}) past `model`'s limit."""
    found = position_limit(getattr(model, "config", None))
    if found is None:
        return
    key, limit = found
    for name, value in lengths.items():
        if value > limit:
            raise LoraRlhfError(
                f"{name}: {value} tokens is more than this model's position limit ({limit}, its config's {key}); "
                f"set it to {limit} or less"
            )
