"""Per-token log-probabilities without a (B, T, V) fp32 logits tensor.

At 7-8B scale (V = 128k for Llama-3) a full fp32 logits tensor for a PPO batch of 8 x 1024 tokens
takes 4 GiB on its own, and autograd keeps it for backward. We project the hidden states to logits a
chunk of positions at a time (with `models/logits.py`'s projection, which reproduces the model's own
forward) and, when gradients are needed, checkpoint each chunk so the backward pass recomputes its
logits instead of storing them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch.utils.checkpoint import checkpoint

# Positions projected to fp32 logits at once: bounds the logits (and, with grad, their recomputation) to
# B x LOGPROB_CHUNK x V; `lora-rlhf plan` counts the log-prob chunk at this size.
LOGPROB_CHUNK = 256

Projection = Callable[[torch.Tensor], torch.Tensor]  # (..., H) states -> (..., V) float32 logits


class TokenLogProbs(NamedTuple):
    logprobs: torch.Tensor  # (B, T) log pi(target_t | prefix)
    entropy: torch.Tensor | None  # (B, T) entropy of pi(. | prefix), detached; None unless asked


def _chunk_logprobs(
    states: torch.Tensor, targets: torch.Tensor, project: Projection, temperature: float
) -> torch.Tensor:
    logp = (project(states) / temperature).log_softmax(-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def _chunk_entropy(states: torch.Tensor, project: Projection, temperature: float) -> torch.Tensor:
    logp = (project(states) / temperature).log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


@torch.no_grad()
def _chunk_logprobs_and_entropy(
    states: torch.Tensor, targets: torch.Tensor, project: Projection, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both from one projection (no grad needed): the LM head is the costliest matmul of a small model."""
    logp = (project(states) / temperature).log_softmax(-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1), -(logp.exp() * logp).sum(-1)


def token_logprobs(
    states: torch.Tensor,
    targets: torch.Tensor,
    project: Projection,
    *,
    chunk_size: int = LOGPROB_CHUNK,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> TokenLogProbs:
    """Log-probabilities of `targets` under the logits `project(states)`, `chunk_size` positions at a time.

    Args:
        states: (B, T, H) last hidden states (or (B, T, V) logits with an identity `project`);
            position t predicts `targets[:, t]`.
        targets: (B, T) token ids.
        project: states -> float32 logits, as the model's forward computes them (`models.logits`).
        temperature: logits are divided by it (match the sampling temperature in PPO).
    Returns:
        TokenLogProbs with (B, T) log-probs and, if asked, (B, T) entropies.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    pieces, entropies = [], []
    for start in range(0, states.shape[1], chunk_size):
        h = states[:, start : start + chunk_size]
        t = targets[:, start : start + chunk_size]
        needs_grad = torch.is_grad_enabled() and h.requires_grad
        if with_entropy and not needs_grad:
            logprobs, entropy = _chunk_logprobs_and_entropy(h, t, project, temperature)
            pieces.append(logprobs)
            entropies.append(entropy)
            continue
        if needs_grad:
            pieces.append(checkpoint(_chunk_logprobs, h, t, project, temperature, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(h, t, project, temperature))
        if with_entropy:
            entropies.append(_chunk_entropy(h.detach(), project, temperature))
    logprobs = torch.cat(pieces, dim=1)
    return TokenLogProbs(logprobs, torch.cat(entropies, dim=1) if with_entropy else None)
