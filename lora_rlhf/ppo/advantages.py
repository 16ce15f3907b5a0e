"""From rollout tensors to PPO's training targets: KL-penalised rewards, GAE advantages and returns.

Every per-token tensor is (B, A): A response positions, position t holding the t-th response token, and
`mask` 1 on real response tokens, 0 on padding (a prefix of 1s in each row; an all-zero row gives zeros,
never NaN). Padded positions of every output are 0, whatever the inputs held there.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch

KLEstimator = Literal["k1", "k3"]


class PenalizedRewards(NamedTuple):
    rewards: torch.Tensor  # (B, A): −β·KL_t, plus the reward model's score at each row's last token
    kl: torch.Tensor  # (B, A): per-token estimate of KL(π_RL ‖ π_SFT), 0 on padding


class Advantages(NamedTuple):
    advantages: torch.Tensor  # (B, A): GAE Â_t, 0 on padding
    returns: torch.Tensor  # (B, A): Â_t + V(s_t), the value head's regression target, 0 on padding


def _valid(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x with padded entries replaced by 0 (where, not multiply: padding may hold inf or NaN)."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over entries where mask is 1; 0 where there are none.

    Args:
        x: (B, A) or any shape.
        mask: same shape as x, 1 on valid entries.
        dim: reduce this dimension only ((B, A), dim=1 -> (B,)); None reduces everything to a scalar.
    """
    mask = mask.to(x.dtype)
    total = _valid(x, mask).sum() if dim is None else _valid(x, mask).sum(dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count.clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over all entries where mask is 1 -> scalar (0 for fewer than two entries).

    Args:
        x: (B, A). mask: (B, A).
        unbiased: Bessel's correction n / (n − 1), as TRL and torch.var do.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((_valid(x - mean, mask)) ** 2, mask)
    n = mask.to(x.dtype).sum()
    if unbiased:
        var = var * n / (n - 1).clamp(min=1.0)  # no host sync; var is already 0 when n <= 1
    return var


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / sqrt(var + eps) over valid entries -> (B, A), 0 on padding.

    Advantages are whitened per batch (the PPO baselines' normalisation); shift_mean=False only rescales
    (the mean is kept), as TRL's PPO did for rewards with whiten(rewards, shift_mean=False).
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return _valid(out, mask)


def _kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator) -> torch.Tensor:
    """(B, A) estimate of KL(π ‖ π_ref) from one sample per token (Schulman, "Approximating KL", 2020)."""
    if estimator == "k1":
        return logprobs - ref_logprobs  # log π/π_ref: unbiased, may be negative
    if estimator == "k3":
        log_r = ref_logprobs - logprobs  # (r − 1) − log r with r = π_ref/π: unbiased and ≥ 0
        return torch.expm1(log_r) - log_r
    raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {estimator!r}")


def _last_valid_onehot(mask: torch.Tensor) -> torch.Tensor:
    """(B, A) mask -> (B, A) float, 1 at each row's last valid position (all zeros for an empty row)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (mask.bool() * positions).argmax(dim=1)  # (B,)
    onehot = torch.nn.functional.one_hot(last, mask.shape[1])
    return (onehot * mask.bool().any(dim=1, keepdim=True)).float()


def penalized_rewards(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    scores: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    kl_estimator: KLEstimator = "k1",
) -> PenalizedRewards:
    """Per-token rewards of InstructGPT's RL objective (Ouyang et al. 2022, arXiv:2203.02155, eq. 2).

        objective = r_θ(x, y) − β · log(π_RL(y|x) / π_SFT(y|x))

    The sequence-level KL is a sum over tokens, so it is paid token by token: r_t = −β·KL_t, and the
    reward model's score r_θ(x, y) is added at the last valid token, where the episode ends.

    Args:
        logprobs: (B, A) log π_RL of the sampled tokens (old policy, at rollout time).
        ref_logprobs: (B, A) log π_SFT of the same tokens.
        scores: (B,) reward model scores.
        mask: (B, A) 1 on response tokens.
        kl_coef: β.
        kl_estimator: "k1" (log-ratio, InstructGPT's) or "k3" (low-variance, always ≥ 0).
    """
    kl = _valid(_kl_per_token(logprobs, ref_logprobs, kl_estimator), mask)
    rewards = -kl_coef * kl + _last_valid_onehot(mask).to(kl.dtype) * scores.to(kl.dtype).unsqueeze(1)
    return PenalizedRewards(rewards, kl)


class RunningMoments:
    """Running mean and (unbiased) std of every scalar seen, for normalising reward model scores.

    Batches are merged with Chan et al.'s parallel form of Welford's algorithm (1979), exact in float64.
    """

    def __init__(self) -> None:
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean
        self.count = 0.0

    @property
    def std(self) -> float:
        """Unbiased standard deviation; 1.0 until two values have been seen (so dividing by it is a no-op)."""
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 1.0

    def update(self, x: torch.Tensor) -> None:
        """Fold every element of x (any shape) into the running moments."""
        x = x.detach().double().flatten()
        n_b = float(x.numel())
        if n_b == 0:
            return
        mean_b = x.mean().item()
        m2_b = ((x - mean_b) ** 2).sum().item()
        total = self.count + n_b
        delta = mean_b - self.mean
        # Chan et al.: M2 = M2_a + M2_b + δ² · n_a · n_b / n
        self.mean += delta * n_b / total
        self.m2 += m2_b + delta**2 * self.count * n_b / total
        self.count = total

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "m2": self.m2, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.m2, self.count = float(state["mean"]), float(state["m2"]), float(state["count"])


def transform_scores(
    scores: torch.Tensor,
    *,
    clip: float | None = None,
    running: RunningMoments | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """(B,) reward model scores -> (B,) scores fed to the RL reward.

    `running` (if given) is updated with this batch first, so its statistics are tracked even without
    normalize; normalize=True then maps the scores to (s − mean) / std of everything seen so far.
    clip bounds the result to [−clip, clip], guarding PPO against a reward model's outliers.
    """
    if running is not None:
        running.update(scores)
    if normalize:
        if running is None:
            raise ValueError("transform_scores(normalize=True) needs running=RunningMoments()")
        scores = (scores - running.mean) / max(running.std, 1e-8)
    if clip is not None:
        if clip <= 0:
            raise ValueError(f"clip must be positive, got {clip!r}")
        scores = scores.clamp(-clip, clip)
    return scores


def gae(values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> Advantages:
    """Generalized Advantage Estimation (Schulman et al. 2016, arXiv:1506.02438, eq. 16).

        δ_t = r_t + γ V(s_{t+1}) − V(s_t)
        Â_t = δ_t + γ λ Â_{t+1}

    The episode ends at each row's last valid token (EOS or truncation), so V and Â beyond it are 0.

    Args:
        values: (B, A) V(s_t) from the rollout's value head.
        rewards: (B, A) per-token rewards (see penalized_rewards).
        mask: (B, A) 1 on response tokens.
        gamma: discount γ. lam: GAE's λ (1 -> Monte-Carlo returns, 0 -> one-step TD).
    """
    mask = mask.to(values.dtype)
    values, rewards = _valid(values, mask), _valid(rewards, mask)
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
