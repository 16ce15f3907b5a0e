"""OpenAI's frequency and presence penalties as a logits processor, one value per row of a batch.

As the OpenAI API defines them (platform.openai.com/docs/guides/text-generation, "frequency and presence
penalties"): mu[j] -> mu[j] - c[j] * frequency_penalty - [c[j] > 0] * presence_penalty, where c[j] counts
token j in the response generated so far (the prompt does not count). Unlike transformers'
`repetition_penalty` (CTRL), these are additive and per row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


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


def penalize(
    scores: torch.Tensor, generated: torch.Tensor, frequency: Sequence[float], presence: Sequence[float]
) -> torch.Tensor:
    """(B, V) scores, (B, A) response ids so far -> (B, V) scores minus each row's frequency and presence penalties."""
    counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
    freq = torch.tensor(frequency, dtype=scores.dtype, device=scores.device)[:, None]
    pres = torch.tensor(presence, dtype=scores.dtype, device=scores.device)[:, None]
    return scores - counts * freq - (counts > 0).to(scores.dtype) * pres
