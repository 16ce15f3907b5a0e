"""From per-token rewards to PPO's training targets: GAE advantages and returns, and their whitening.

Every per-token tensor is (B, A): A response positions, position t holding the t-th response token, and
`mask` 1 on real response tokens, 0 on padding (a prefix of 1s in each row; an all-zero row gives zeros,
never NaN). Padded positions of every output are 0, whatever the inputs held there.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from lora_rlhf.ppo.stats import masked_mean, masked_var, zero_padding
from lora_rlhf.train import distributed


class Advantages(NamedTuple):
    advantages: torch.Tensor  # (B, A): GAE Â_t, 0 on padding
    returns: torch.Tensor  # (B, A): Â_t + V(s_t), the value head's regression target, 0 on padding


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / sqrt(var + eps) over valid entries -> (B, A), 0 on padding.

    Advantages are whitened per batch (the PPO baselines' normalisation); shift_mean=False only rescales
    (the mean is kept), as TRL's PPO did for rewards with whiten(rewards, shift_mean=False).
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return zero_padding(out, mask)


def whiten_across_processes(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """`whiten` with the mean and unbiased variance of the valid entries of EVERY process's x -> (B, A).

    Data-parallel PPO (issue 13): each process holds its share of the rollout, and per-process whitening
    would give each share its own scale. The moments are reduced as sums (Σx, n, then Σ(x − mean)²), in
    float64, so they do not depend on how the rollout was split.
    """
    mask = mask.to(x.dtype)
    sums = torch.stack([zero_padding(x, mask).sum(), mask.sum()]).double()
    distributed.all_reduce_sum(sums)
    n = sums[1]
    mean = (sums[0] / n.clamp(min=1.0)).to(x.dtype)
    squares = zero_padding(x - mean, mask).pow(2).sum().double().reshape(1)
    distributed.all_reduce_sum(squares)
    var = squares[0] / (n - 1).clamp(min=1.0)  # Bessel's correction, as masked_var; 0 when n <= 1
    return zero_padding((x - mean) * torch.rsqrt(var.to(x.dtype) + eps), mask)


def gae(values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> Advantages:
    """Generalized Advantage Estimation (Schulman et al. 2016, arXiv:1506.02438, eq. 16).

        δ_t = r_t + γ V(s_{t+1}) − V(s_t)
        Â_t = δ_t + γ λ Â_{t+1}

    The episode ends at each row's last valid token (EOS or truncation), so V and Â beyond it are 0.

    Args:
        values: (B, A) V(s_t) from the rollout's value head.
        rewards: (B, A) per-token rewards (see ppo.rewards.penalized_rewards).
        mask: (B, A) 1 on response tokens.
        gamma: discount γ. lam: GAE's λ (1 -> Monte-Carlo returns, 0 -> one-step TD).
    """
    mask = mask.to(values.dtype)
    values, rewards = zero_padding(values, mask), zero_padding(rewards, mask)
    n_positions = values.shape[1]
    next_value = torch.zeros_like(values[:, 0])  # V(s_{t+1}), 0 past the end
    next_advantage = torch.zeros_like(values[:, 0])  # Â_{t+1}, 0 past the end
    reversed_advantages = []
    for t in reversed(range(n_positions)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # δ_t = r_t + γ V(s_{t+1}) − V(s_t)
        advantage = (delta + gamma * lam * next_advantage) * mask[:, t]  # Â_t = δ_t + γλ Â_{t+1}
        reversed_advantages.append(advantage)
        next_value, next_advantage = values[:, t], advantage  # values are already 0 on padding
    advantages = torch.stack(reversed_advantages[::-1], dim=1)
    returns = (advantages + values) * mask  # R_t = Â_t + V(s_t), the value target (TD(λ) return)
    return Advantages(advantages, returns)
