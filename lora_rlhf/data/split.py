"""Held-out splits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch

T = TypeVar("T")


def hold_out(items: Sequence[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Split `items` into (train, held_out) with round(fraction * n) held out, chosen by `seed`.

    At least one item stays in training; with fraction > 0 and n >= 2, at least one is held out.
    """
    n = len(items)
    n_out = min(n - 1, max(1 if fraction > 0 and n >= 2 else 0, round(fraction * n)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[:n_out])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]
