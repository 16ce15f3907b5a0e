"""The sampling policy's log-probs and entropy, recorded during `generate` instead of a second forward.

A PPO rollout needs log pi_old(a_t | s_t) of every sampled token. Generation has just computed the logits
those tokens were drawn from, so a forward over prompt + response under the same adapter repeats it. This
logits processor keeps them as generation runs: at each step it turns the raw logits into
log softmax(logits / T) (the distribution the PPO ratio and the KL use, whatever warpers sampling applies
after it), and at the next step gathers the log-prob of the token that was drawn, which `generate` has
appended to `input_ids` by then. Memory is one (B, V) step, never (B, A, V).

transformers places a caller's logits processors after its own (neutral, see `models/sequences.py`) ones and
before the temperature / top-k / top-p warpers, so `scores` here are the model's own logits.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor


class SampledLogProbs(LogitsProcessor):
    """Pass as `generate(..., logits_processor=LogitsProcessorList([recorder]))`, then call `result(ids)`.

    Leaves the scores untouched. One recorder serves one `generate` call.
    """

    def __init__(self, temperature: float) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self._last: torch.Tensor | None = None  # (B, V) log-probs of the step whose token is not yet known
        self._logprobs: list[torch.Tensor] = []  # per step, (B,)
        self._entropy: list[torch.Tensor] = []  # per step, (B,)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._last is not None:
            self._take(input_ids[:, -1])
        logp = (scores.float() / self.temperature).log_softmax(-1)
        self._entropy.append(-(logp.exp() * logp).sum(-1))
        self._last = logp
        return scores

    def _take(self, tokens: torch.Tensor) -> None:
        self._logprobs.append(self._last.gather(-1, tokens.unsqueeze(-1)).squeeze(-1))
        self._last = None

    def result(self, sequences: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`generate`'s (B, P + A) output -> (B, A) log-probs of the A generated tokens and (B, A) entropies.

        Columns after a row's stop token hold whatever was sampled there (padding); mask them as the rollout does.
        """
        if self._last is not None:
            self._take(sequences[:, -1])
        if not self._logprobs:
            empty = sequences.new_zeros((sequences.shape[0], 0), dtype=torch.float32)
            return empty, empty.clone()
        return torch.stack(self._logprobs, dim=1), torch.stack(self._entropy, dim=1)
