"""The reward of InstructGPT's RL objective, per token (Ouyang et al. 2022, arXiv:2203.02155, eq. 2):

    objective(φ) = E_{(x,y)~π_RL}[ r_θ(x, y) − β · log(π_RL(y|x) / π_SFT(y|x)) ] + γ · E_{x~D_pretrain}[ log π_RL(x) ]

This module shapes its first expectation: the reward model's score r_θ(x, y) (clipped, normalised, penalised
when the response never reached EOS) and the KL penalty paid token by token. The γ (ptx) term is a loss,
in ppo/losses.py.

Every per-token tensor is (B, A): A response positions, position t holding the t-th response token, and
`mask` 1 on real response tokens, 0 on padding (a prefix of 1s in each row). Padded positions of every
output are 0, whatever the inputs held there.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from lora_rlhf.ppo.config import KLEstimator
from lora_rlhf.ppo.stats import zero_padding


class PenalizedRewards(NamedTuple):
    rewards: torch.Tensor  # (B, A): −β·KL_t, plus the reward model's score at each row's last token
    kl: torch.Tensor  # (B, A): per-token estimate of KL(π_RL ‖ π_SFT), 0 on padding


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
    kl = zero_padding(_kl_per_token(logprobs, ref_logprobs, kl_estimator), mask)
    rewards = -kl_coef * kl + _last_valid_onehot(mask).to(kl.dtype) * scores.to(kl.dtype).unsqueeze(1)
    return PenalizedRewards(rewards, kl)


def penalize_missing_eos(scores: torch.Tensor, finished: torch.Tensor, penalty: float) -> torch.Tensor:
    """(B,) scores and (B,) bool `finished` (the response ended in EOS) -> (B,) scores, `penalty` lower
    for every response cut at max_new_tokens.

    Shapes r_θ(x, y) of eq. 2 (Ouyang et al. 2022): the reward model only ever ranked responses ending in
    EOS, so its score of a truncated one is out of distribution. Not in the paper: TRL's missing_eos_penalty.
    """
    return scores - penalty * (~finished).to(scores.dtype)


def leave_one_out_baseline(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) scores, B/group_size groups of consecutive rows (one prompt's samples) -> (B,) each score minus
    the mean of the other scores in its group.

    The RLOO baseline (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free!"; Ahmadian et al.
    2024): it does not depend on the response it is subtracted from, so it removes how easy the prompt is
    without biasing the policy gradient. s_i − mean_{j≠i} s_j = k/(k−1) · (s_i − mean_j s_j) for k samples.
    """
    if group_size < 2 or scores.shape[0] % group_size:
        raise ValueError(f"leave_one_out_baseline: {scores.shape[0]} scores are not groups of >= 2 ({group_size})")
    groups = scores.view(-1, group_size)
    centered = groups - groups.mean(dim=1, keepdim=True)
    return (centered * (group_size / (group_size - 1))).view(-1)


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
    update_running: bool = True,
) -> torch.Tensor:
    """(B,) reward model scores -> (B,) scores fed to the RL reward.

    `running` (if given) is updated with this batch first, so its statistics are tracked even without
    normalize; normalize=True then maps the scores to (s − mean) / std of everything seen so far.
    `update_running=False` when the caller already folded in the scores (data-parallel PPO folds every
    process's scores, issue 13).
    clip bounds the result to [−clip, clip], guarding PPO against a reward model's outliers.
    """
    if running is not None and update_running:
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
