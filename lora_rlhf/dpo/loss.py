"""DPO's losses over K ranked responses per prompt (Rafailov et al. 2023, arXiv:2305.18290).

The policy's implicit reward of a response is its log-ratio to the reference, scaled by β (eq. 5):

    r̂(x, y) = β · (log π_θ(y|x) − log π_ref(y|x))

and DPO maximises the likelihood of the labelers' preferences under a preference model of those rewards:

- "sigmoid" (eq. 7, Bradley–Terry): −log σ(r̂(x, y_w) − r̂(x, y_l)) per pair; for K > 2 every untied pair of a
  ranking, averaged per prompt as the reward model's loss does (InstructGPT eq. 1, lora_rlhf/rm/loss.py).
- "plackett_luce" (appendix A.3, eq. 18): the likelihood of the whole ranking τ,

      −Σ_{k=1}^{K} log( exp r̂(x, y_τ(k)) / Σ_{j=k}^{K} exp r̂(x, y_τ(j)) ),

  the best response chosen among all K, the second among the K − 1 left, and so on. At K = 2 it is the
  sigmoid loss exactly (the last factor is 1).

Ties (`rm.ties: skip_pairs`, shared with the reward model): a tied pair carries no preference, in both losses.
For Plackett–Luce each response is "chosen" among itself and the responses ranked strictly below it, so
responses tied with it are left out of its denominator; a response with nothing strictly below it adds no term.
Without ties this is eq. 18 term for term (the responses ranked at or after position k are y_τ(k) and those
strictly below it). A prompt whose responses are all tied gives no loss term and is not counted.

Tensors are (B, K_max) grids: B prompts, K_max the most responses of any of them, `valid` False on the padding
slots of prompts with fewer; every figure stays finite whatever the padding holds.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from lora_rlhf.rm.loss import preference_pairs

LossType = Literal["plackett_luce", "sigmoid"]


class DPOLoss(NamedTuple):
    loss: torch.Tensor  # scalar, with grad: mean over compared prompts of each prompt's loss
    # Over the untied pairs (y_w, y_l) of the batch, detached; TRL's DPOTrainer logs the same figures (K = 2)
    # as rewards/chosen, rewards/rejected, rewards/margins and rewards/accuracies.
    chosen_rewards: torch.Tensor  # scalar: mean r̂(x, y_w)
    rejected_rewards: torch.Tensor  # scalar: mean r̂(x, y_l)
    margins: torch.Tensor  # scalar: mean r̂(x, y_w) − r̂(x, y_l)
    accuracies: torch.Tensor  # scalar: fraction of pairs with r̂(x, y_w) > r̂(x, y_l)
    pairs: torch.Tensor  # scalar: untied pairs compared
    prompts: torch.Tensor  # scalar: prompts with at least one untied pair, what `loss` averages over


def implicit_rewards(policy_logps: torch.Tensor, reference_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """(...) sequence log-probs under the policy and the reference -> (...) β · log π/π_ref (DPO eq. 5)."""
    return beta * (policy_logps - reference_logps)


def sigmoid_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """DPO's pairwise loss (eq. 7) per pair: (P,) sequence log-probs of each pair's chosen and rejected response
    under the policy and the reference -> (P,) −log σ(β((log π_w − log ref_w) − (log π_l − log ref_l))).
    """
    chosen = implicit_rewards(chosen_logps, ref_chosen_logps, beta)
    rejected = implicit_rewards(rejected_logps, ref_rejected_logps, beta)
    return -F.logsigmoid(chosen - rejected)


def pairwise_sigmoid(rewards: torch.Tensor, ranks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, K) implicit rewards, ranks (0 = best), validity -> (B,) mean over each prompt's untied pairs of
    −log σ(r̂_w − r̂_l); 0 where a prompt has no untied pair.
    """
    pairs = preference_pairs(ranks, valid)  # (B, K, K): i beats j
    diff = _finite(rewards, valid).unsqueeze(2) - _finite(rewards, valid).unsqueeze(1)  # (B, K, K): r̂_i − r̂_j
    terms = torch.where(pairs, -F.logsigmoid(diff), torch.zeros_like(diff))
    return terms.sum((1, 2)) / pairs.sum((1, 2)).clamp(min=1)


def plackett_luce(rewards: torch.Tensor, ranks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, K) implicit rewards, ranks (0 = best), validity -> (B,) the negative Plackett–Luce log-likelihood of
    each prompt's ranking (DPO appendix A.3, eq. 18; ties as in the module docstring); 0 where nothing is ranked.

        loss_b = −Σ_i [ r̂_i − log( exp r̂_i + Σ_{j ranked strictly below i} exp r̂_j ) ]
    """
    r = _finite(rewards, valid)
    below = preference_pairs(ranks, valid)  # (B, K, K): True where j is ranked strictly below i
    eye = torch.eye(r.shape[1], dtype=torch.bool, device=r.device)
    competitors = below | eye  # (B, K, K): i's own choice set, itself and what it beat
    scores = r.unsqueeze(1).expand_as(competitors)  # [b, i, j] = r̂_j
    log_norm = torch.logsumexp(scores.masked_fill(~competitors, float("-inf")), dim=2)  # (B, K)
    chosen = below.any(2)  # (B, K): responses with something ranked below them give a term
    terms = torch.where(chosen, r - log_norm, torch.zeros_like(r))
    return -terms.sum(1)


def ranking_dpo_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    ranks: torch.Tensor,
    valid: torch.Tensor,
    beta: float,
    loss_type: LossType = "plackett_luce",
) -> DPOLoss:
    """DPO on K ranked responses per prompt.

    Args:
        policy_logps: (B, K) log π_θ(y_k|x), summed over each response's tokens (with grad).
        reference_logps: (B, K) the same under the frozen reference.
        ranks: (B, K) integer rank, 0 = best; equal ranks are ties.
        valid: (B, K) bool, False on padding slots.
        beta: β, the strength of the implicit KL constraint to the reference.
        loss_type: "plackett_luce" (eq. 18) or "sigmoid" (eq. 7 on every untied pair); equal at K = 2.
    """
    rewards = implicit_rewards(policy_logps, reference_logps, beta)  # (B, K)
    per_prompt = (
        plackett_luce(rewards, ranks, valid)
        if loss_type == "plackett_luce"
        else pairwise_sigmoid(rewards, ranks, valid)
    )
    pairs = preference_pairs(ranks, valid)  # (B, K, K)
    compared = pairs.flatten(1).any(1)  # (B,)
    loss = torch.where(compared, per_prompt, torch.zeros_like(per_prompt)).sum() / compared.sum().clamp(min=1)
    with torch.no_grad():
        r = _finite(rewards, valid)
        n = pairs.sum().clamp(min=1)
        winner = (r.unsqueeze(2) * pairs).sum() / n  # r̂_i of every pair (i, j) where i beats j
        loser = (r.unsqueeze(1) * pairs).sum() / n
        accuracies = ((r.unsqueeze(2) > r.unsqueeze(1)) & pairs).sum() / n
    return DPOLoss(loss, winner, loser, winner - loser, accuracies, pairs.sum(), compared.sum())


def _finite(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """`values` with the padding slots set to 0, so a NaN there never reaches a sum (0 · NaN is NaN)."""
    return torch.where(valid, values, torch.zeros_like(values))
