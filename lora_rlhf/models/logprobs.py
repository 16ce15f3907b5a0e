"""Per-token log-probabilities without a (B, T, V) fp32 logits tensor.

At 7-8B scale (V = 128k for Llama-3) a full fp32 logits tensor for a PPO batch of 8 x 1024 tokens
takes 4 GiB on its own, and autograd keeps it for backward. We project the hidden states through the
LM head a chunk of positions at a time and, when gradients are needed, checkpoint each chunk so the
backward pass recomputes its logits instead of storing them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class TokenLogProbs(NamedTuple):
    logprobs: torch.Tensor  # (B, T) log pi(target_t | prefix)
    entropy: torch.Tensor | None  # (B, T) entropy of pi(. | prefix), detached; None unless asked


def _chunk_logprobs(
    hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module, temperature: float, softcap: float | None
) -> torch.Tensor:
    logits = lm_head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits / temperature
    return logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def _chunk_entropy(hidden: torch.Tensor, lm_head: nn.Module, temperature: float, softcap: float | None) -> torch.Tensor:
    logits = lm_head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    logp = (logits / temperature).log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


@torch.no_grad()
def _chunk_logprobs_and_entropy(
    hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module, temperature: float, softcap: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both from one projection (no grad needed): the LM head is the costliest matmul of a small model."""
    logits = lm_head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    logp = (logits / temperature).log_softmax(-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1), -(logp.exp() * logp).sum(-1)


def token_logprobs(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    lm_head: nn.Module,
    *,
    chunk_size: int = 256,
    temperature: float = 1.0,
    softcap: float | None = None,
    with_entropy: bool = False,
) -> TokenLogProbs:
    """Log-probabilities of `targets` under the logits `lm_head(hidden)`, `chunk_size` positions at a time.

    Args:
        hidden: (B, T, H) hidden states; position t predicts `targets[:, t]`.
        targets: (B, T) token ids.
        lm_head: the model's output projection.
        temperature: logits are divided by it (match the sampling temperature in PPO).
        softcap: final-logit soft-capping of models that use it (Gemma-2), else None.
    Returns:
        TokenLogProbs with (B, T) log-probs and, if asked, (B, T) entropies.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    pieces, entropies = [], []
    for start in range(0, hidden.shape[1], chunk_size):
        h = hidden[:, start : start + chunk_size]
        t = targets[:, start : start + chunk_size]
        needs_grad = torch.is_grad_enabled() and h.requires_grad
        if with_entropy and not needs_grad:
            logprobs, entropy = _chunk_logprobs_and_entropy(h, t, lm_head, temperature, softcap)
            pieces.append(logprobs)
            entropies.append(entropy)
            continue
        if needs_grad:
            pieces.append(checkpoint(_chunk_logprobs, h, t, lm_head, temperature, softcap, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(h, t, lm_head, temperature, softcap))
        if with_entropy:
            entropies.append(_chunk_entropy(h.detach(), lm_head, temperature, softcap))
    logprobs = torch.cat(pieces, dim=1)
    return TokenLogProbs(logprobs, torch.cat(entropies, dim=1) if with_entropy else None)
