"""The base's position limit, and the one check every stage makes of its lengths against it (issue 29).

A max_length past `max_position_embeddings` was accepted without a word: learned position embeddings
(GPT-2's `wpe`) index out of range, and rotary bases (Llama, Qwen2, GPT-NeoX) run on positions they were
never trained at. Each stage calls `check_lengths` with its recipe keys as soon as it has the stack.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lora_rlhf.errors import LoraRlhfError

# Config keys of the position limit, by architecture family (Llama/Qwen/NeoX: the first; GPT-2: the second).
_LIMIT_KEYS = ("max_position_embeddings", "n_positions")
# Above this a "limit" is a placeholder, not a trained length (tokenizers without one report 1e30).
SANE_CONTEXT = 10_000_000


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
