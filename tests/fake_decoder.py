"""A stand-in for a RoleStack under the decoding engine (models/engine.py): a fake model's logits, no network."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch


class FakeStack:
    """What `engine.sample` and `Engine` ask of a RoleStack. `first(rows)` gives the prefill's (N, V) logits;
    `step(ids, mask, positions, cache)` those of each later step, the rows still decoding only."""

    tokenizer = None

    def __init__(self, first: Callable[[int], torch.Tensor], step: Callable, cache) -> None:
        self.first, self.step, self.cache = first, step, cache

    def eos_ids(self) -> set[int]:
        return set()

    def use(self, role: str):
        return contextlib.nullcontext()

    def generation_mode(self):
        return contextlib.nullcontext()

    def dequantized_base(self, rows: int, tokens: int):
        return contextlib.nullcontext()

    def next_token_logits(self, roles, input_ids, attention_mask, position_ids, cache=None):
        if cache is None:  # the prefill
            return self.first(input_ids.shape[0]), self.cache
        return self.step(input_ids, attention_mask, position_ids, cache), cache
