"""The losses PPO-ptx minimises: InstructGPT's objective (Ouyang et al. 2022, arXiv:2203.02155, eq. 2)

    objective(φ) = E_{(x,y)~π_RL}[ r_θ(x, y) − β · log(π_RL(y|x) / π_SFT(y|x)) ] + γ · E_{x~D_pretrain}[ log π_RL(x) ]

is maximised as three losses: PPO's clipped surrogate on advantages of the KL-penalised reward (ppo/rewards.py,
ppo/advantages.py), the value head's clipped regression onto the returns, and the ptx term, −γ times the
mean log-likelihood of pretraining-style text. The policy minimises policy_loss + ptx_loss; the value head,
a separate role with its own optimizer, minimises value_loss (Schulman et al. 2017, arXiv:1707.06347).

Per-token tensors are (B, A) with `mask` 1 on response tokens; every mean is over valid tokens only.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from lora_rlhf.ppo.stats import masked_mean, masked_var


class PolicyLoss(NamedTuple):
    loss: torch.Tensor  # scalar, with grad: clipped surrogate, to minimise
    clipfrac: torch.Tensor  # scalar, detached: fraction of tokens where the clipped branch was taken
    approx_kl: torch.Tensor  # scalar, detached: mean ½ (log π − log π_old)², KL(π_old ‖ π) to 2nd order
    ratio_mean: torch.Tensor  # scalar, detached: mean π / π_old


class ValueLoss(NamedTuple):
    loss: torch.Tensor  # scalar, with grad: ½ · clipped squared error
    clipfrac: torch.Tensor  # scalar, detached: fraction of tokens where the clipped error was larger


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> PolicyLoss:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), negated to be minimised.

        L = −E_t[ min(ρ_t Â_t, clip(ρ_t, 1 − ε, 1 + ε) Â_t) ],   ρ_t = π(a_t|s_t) / π_old(a_t|s_t)

    Args:
        logprobs: (B, A) log π of the rollout's tokens under the current policy (with grad).
        old_logprobs: (B, A) the same at rollout time.
        advantages: (B, A) Â_t (usually whitened).
        mask: (B, A) 1 on response tokens.
        clip_range: ε.
    """
    valid = mask.bool()
    log_ratio = torch.where(valid, logprobs - old_logprobs, torch.zeros_like(logprobs))
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)  # −min(a, b) = max(−a, −b)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
        approx_kl = masked_mean(0.5 * log_ratio**2, mask)
        ratio_mean = masked_mean(ratio, mask)
    return PolicyLoss(loss, clipfrac, approx_kl, ratio_mean)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> ValueLoss:
    """Clipped value loss of the PPO baselines (OpenAI baselines ppo2; Schulman et al. 2017 §5).

        L_V = ½ · E_t[ max((V_t − R_t)², (clip(V_t, V_old − ε, V_old + ε) − R_t)²) ]

    Args:
        values: (B, A) current value head outputs (with grad).
        old_values: (B, A) values at rollout time.
        returns: (B, A) targets R_t from gae().
        mask: (B, A) 1 on response tokens.
        clip_range: ε, in reward units.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped_error > unclipped_error).to(values.dtype), mask)
    return ValueLoss(loss, clipfrac)


class KLLoss(NamedTuple):
    loss: torch.Tensor  # scalar, with grad: β · mean per-token k3 KL(π_θ ‖ π_ref), added to the policy's loss
    kl: torch.Tensor  # scalar, detached: the mean per-token k3 estimate


def kl_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> KLLoss:
    """GRPO's KL term (Shao et al. 2024, arXiv:2402.03300, eqs. 3-4): the penalty as a loss, not in the reward.

        D_KL = π_ref/π_θ − log(π_ref/π_θ) − 1        per token, unbiased and >= 0 (Schulman's k3)

    Its gradient pulls π_θ toward π_ref at every sampled token; k1 (log π_θ − log π_ref) would have a zero expected
    gradient here, which is why GRPO, and TRL's GRPOTrainer, use k3. Averaged over valid tokens like policy_loss.

    Args:
        logprobs: (B, A) log π_θ of the rollout's tokens (with grad).
        ref_logprobs: (B, A) log π_ref of the same tokens, from the rollout.
        mask: (B, A) 1 on response tokens.
        kl_coef: β.
    """
    log_r = torch.where(mask.bool(), ref_logprobs - logprobs, torch.zeros_like(logprobs))
    per_token = torch.expm1(log_r) - log_r
    kl = masked_mean(per_token, mask)
    return KLLoss(kl_coef * kl, kl.detach())


class PtxLoss(NamedTuple):
    loss: torch.Tensor  # scalar, with grad: γ · lm_loss, added to the policy's loss
    lm_loss: torch.Tensor  # scalar, detached: mean −log π_RL per target token (the alignment tax's measure)


def ptx_loss(logprobs: torch.Tensor, mask: torch.Tensor, ptx_coef: float) -> PtxLoss:
    """The pretraining term of eq. 2 (Ouyang et al. 2022), negated to be minimised: −γ · E_{x~D_pretrain}[log π_RL(x)].

    The expectation is a mean over target tokens (every token of {"text"} rows, the completion of
    demonstrations), as the SFT loss is, so γ weighs a per-token NLL against a per-token PPO loss.

    Args:
        logprobs: (B, T) log π_RL of each next token of the ptx batch (with grad).
        mask: (B, T) 1 on target tokens, 0 on prompt and padding.
        ptx_coef: γ (paper: 27.8).
    """
    lm = masked_mean(-logprobs.float(), mask)
    return PtxLoss(ptx_coef * lm, lm.detach())


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var(R − V) / Var(R) over valid tokens: 1 is a perfect value head, ≤ 0 no better than a constant.

    Args:
        values: (B, A). returns: (B, A). mask: (B, A). Returns nan when Var(R) is 0.
    """
    values, returns = values.detach(), returns.detach()
    var_returns = masked_var(returns, mask).item()
    if var_returns == 0:
        return float("nan")
    return 1.0 - masked_var(returns - values, mask).item() / var_returns
