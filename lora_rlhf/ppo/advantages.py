"""From per-token rewards to PPO's training targets: GAE advantages and returns, the critic-free group
estimators RLOO and GRPO (issue 27, docs/critic_free.md), and whitening.

Every per-token tensor is (B, A): A response positions, position t holding the t-th response token, and
`mask` 1 on real response tokens, 0 on padding (a prefix of 1s in each row; an all-zero row gives zeros,
never NaN). Padded positions of every output are 0, whatever the inputs held there.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from lora_rlhf.ppo.rewards import leave_one_out_baseline
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


def sequence_returns(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, A) per-token rewards -> (B,) each response's undiscounted return Σ_t r_t (γ = 1).

    With penalized_rewards' r_t this is r_θ(x, y) − β · Σ_t KL_t: InstructGPT eq. 2's objective for one sample,
    the quantity TRL's RLOOTrainer baselines (its score − β · the summed k1 KL).
    """
    return zero_padding(rewards, mask).sum(dim=1)


def rloo_advantages(returns: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE Leave-One-Out (Ahmadian et al. 2024, arXiv:2402.14740, eq. 6; Kool et al. 2019).

        A_i = R_i − 1/(k−1) · Σ_{j≠i} R_j

    Args:
        returns: (B,) each sample's whole return; B/k groups of k consecutive rows, one prompt's samples.
        group_size: k >= 2.
    Returns: (B,) A_i; each group's advantages sum to 0.
    """
    return leave_one_out_baseline(returns, group_size)


def grpo_advantages(scores: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's outcome-supervised advantage (Shao et al. 2024, arXiv:2402.03300, §4.1.2).

        A_i = (r_i − mean_j r_j) / (std_j r_j + eps)      over the k samples j of the prompt

    std is unbiased (Bessel), eps added to it, as TRL's GRPOTrainer (scale_rewards="group") computes it, so a
    group of equal scores gets 0, not NaN.

    Args:
        scores: (B,) reward-model scores; B/k groups of k consecutive rows, one prompt's samples.
        group_size: k >= 2.
    Returns: (B,) A_i.
    """
    if group_size < 2 or scores.shape[0] % group_size:
        raise ValueError(f"grpo_advantages: {scores.shape[0]} scores are not groups of >= 2 ({group_size})")
    groups = scores.view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True, unbiased=True)
    return ((groups - mean) / (std + eps)).view(-1)


def per_token(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) one advantage per sample -> (B, A): the same value at every response token, 0 on padding.

    Both RLOO (the whole response is one action) and GRPO's outcome supervision ("Â_{i,t} = r̃_i for every
    token t") give each token of a response the response's advantage.
    """
    return zero_padding(advantages.unsqueeze(1).expand(mask.shape), mask)


def zero_std_fraction(scores: torch.Tensor, group_size: int) -> float:
    """(B,) scores -> the share of prompts whose k samples all scored the same (no signal for rloo / grpo)."""
    groups = scores.view(-1, group_size)
    return (groups.max(dim=1).values == groups.min(dim=1).values).float().mean().item()
