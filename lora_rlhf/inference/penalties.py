"""OpenAI's frequency and presence penalties as a logits processor for `generate` (the penalty: models/sampling.py)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lora_rlhf.models.sampling import penalize


def penalties(width: int, frequency: Sequence[float], presence: Sequence[float]):
    """A LogitsProcessorList applying row i's penalties to tokens after column `width` (the padded prompt), or
    None when every penalty is 0."""
    if not any(frequency) and not any(presence):
        return None
    from transformers import LogitsProcessor, LogitsProcessorList

    class _Penalties(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            return penalize(scores, input_ids[:, width:], frequency, presence)

    return LogitsProcessorList([_Penalties()])
