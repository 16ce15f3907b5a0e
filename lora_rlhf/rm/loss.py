"""The reward model's ranking loss (InstructGPT §3.5, eq. 1).

    loss(θ) = −1/C(K,2) · E_{(x, y_w, y_l)} [ log σ(r_θ(x, y_w) − r_θ(x, y_l)) ]

All C(K,2) comparisons of one prompt form ONE batch element: the K responses are scored once and every
pair is formed from those K scores, which the paper notes is both faster and less prone to overfitting
than shuffling the pairs into separate batch elements.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class RankingLoss(NamedTuple):
    loss: torch.Tensor  # scalar: mean over prompts of the mean over their pairs
    accuracy: torch.Tensor  # scalar, detached: fraction of pairs with r(y_w) > r(y_l)
    margin: torch.Tensor  # scalar, detached: mean r(y_w) − r(y_l) over pairs
    pairs: torch.Tensor  # scalar: number of pairs compared
    prompts: torch.Tensor  # scalar: prompts with at least one pair, what `loss` averages over


def preference_pairs(ranks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, K) ranks (0 = best) and (B, K) validity -> (B, K, K) mask, True where response i beats j.

    Equal ranks (ties) give no pair; padding responses (valid = False) give none either.
    """
    better = ranks.unsqueeze(2) < ranks.unsqueeze(1)
    both = valid.unsqueeze(2) & valid.unsqueeze(1)
    return better & both


def ranking_loss(scores: torch.Tensor, ranks: torch.Tensor, valid: torch.Tensor) -> RankingLoss:
    """Pairwise loss of K ranked responses per prompt.

    Args:
        scores: (B, K) reward of each response.
        ranks: (B, K) integer rank, 0 = best.
        valid: (B, K) bool, False for padding when prompts have fewer than K responses.
    """
    pairs = preference_pairs(ranks, valid)  # (B, K, K)
    diff = scores.unsqueeze(2) - scores.unsqueeze(1)  # (B, K, K): r_i − r_j
    per_prompt = pairs.sum((1, 2)).clamp(min=1)  # C(K,2) without ties
    logsig = F.logsigmoid(diff) * pairs
    compared = pairs.any(2).any(1)  # (B,) prompts with a pair; an all-tied prompt gives no loss term
    loss = -(logsig.sum((1, 2)) / per_prompt)[compared].mean()
    with torch.no_grad():
        n = pairs.sum().clamp(min=1)
        accuracy = ((diff > 0) & pairs).sum() / n
        margin = (diff * pairs).sum() / n
    return RankingLoss(loss, accuracy, margin, pairs.sum(), compared.sum())
