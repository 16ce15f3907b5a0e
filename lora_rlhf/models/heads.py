"""Scalar heads for the reward and value roles, and the index helpers they read hidden states with."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

HeadKind = Literal["reward", "value"]


class ScalarHead(nn.Module):
    """A linear map from the last hidden state to one scalar per position.

    The reward role reads it at the last non-pad token (InstructGPT §3.5: "a scalar reward");
    the value role reads it at every token. It runs in fp32 whatever the base's dtype, because
    rewards and values feed differences and advantages where bf16 rounding shows.
    """

    def __init__(self, hidden_size: int, kind: HeadKind) -> None:
        super().__init__()
        if kind not in ("reward", "value"):
            raise ValueError(f"head kind must be 'reward' or 'value', not {kind!r}")
        self.kind = kind
        self.linear = nn.Linear(hidden_size, 1, dtype=torch.float32)
        # Zero init: every response starts with the same score and the ranking loss alone sets the direction.
        # The former random init (std 1/sqrt(H)) gave the demo model's untrained RM scores of std ~1.9, which
        # a head trained at a LoRA rate could not undo in a few steps (issue 10; docs/benchmarks.md). A zero
        # head also keeps a fresh value function from swamping the KL penalty early in PPO.
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, H) hidden states -> (B, T) scalars."""
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)

    @torch.no_grad()
    def shift_bias(self, delta: float) -> None:
        """Add `delta` to the output, e.g. so demonstrations score 0 on average (InstructGPT §3.5)."""
        self.linear.bias.add_(delta)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 0/1 mask -> (B,) index of the last position whose mask is 1 (works for left or right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(dim=1)


def gather_last(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) per-position values -> (B,) the value at each row's last non-pad token."""
    index = last_token_index(attention_mask)
    return values.gather(1, index.unsqueeze(1)).squeeze(1)
