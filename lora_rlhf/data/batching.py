"""Padding token sequences into batches."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_left(sequences: Sequence[Sequence[int] | torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (T_i,) ids -> (B, T) ids and (B, T) attention mask, padded on the left.

    Left padding keeps every sequence's last token in the last column, where generation continues
    and where the reward head reads.
    """
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if len(seq):
            ids[i, width - len(seq) :] = torch.as_tensor(seq, dtype=torch.long)
            mask[i, width - len(seq) :] = 1
    return ids, mask


def pad_right(sequences: Sequence[Sequence[int] | torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (T_i,) ids -> (B, T) ids and (B, T) attention mask, padded on the right.

    Responses that continue a prompt's KV cache are padded on the right, so each starts right after its prompt.
    """
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if len(seq):
            ids[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            mask[i, : len(seq)] = 1
    return ids, mask


def length_grouped_order(sequences: Sequence[Sequence[int] | torch.Tensor], prompt_lengths: Sequence[int]) -> list[int]:
    """An order of (prompt + response) rows for batching that wastes little on padding, keeping each prompt's
    rows together (so a batch encodes a shared prompt once): prompts by their longest response, then by
    first appearance; rows in their given order within a prompt.

    A batch pads every response to its longest: in the demo's eval, 384 samples in one batch ran every row
    to the 24-token budget one row needed while the mean response had 8 tokens.
    """
    keys = [tuple(int(t) for t in seq[:start]) for seq, start in zip(sequences, prompt_lengths)]
    longest: dict[tuple[int, ...], int] = {}
    first: dict[tuple[int, ...], int] = {}
    for i, (seq, start, key) in enumerate(zip(sequences, prompt_lengths, keys)):
        longest[key] = max(longest.get(key, 0), len(seq) - start)
        first.setdefault(key, i)
    return sorted(range(len(sequences)), key=lambda i: (longest[keys[i]], first[keys[i]], i))
