"""The ranking loss (InstructGPT §3.5 eq. 1) against hand-computed values."""

from __future__ import annotations

import math

import torch

from lora_rlhf.data.rankings import RankingExample
from lora_rlhf.rm.batching import collate_rankings, scatter_scores
from lora_rlhf.rm.loss import preference_pairs, ranking_loss


def _nls(x: float) -> float:
    """-log sigmoid(x)."""
    return math.log1p(math.exp(-x))


def test_k2_loss_is_minus_log_sigmoid_of_the_margin():
    scores = torch.tensor([[1.5, 0.5]])
    out = ranking_loss(scores, torch.tensor([[0, 1]]), torch.ones(1, 2, dtype=torch.bool))
    assert math.isclose(out.loss.item(), _nls(1.0), rel_tol=1e-6)  # log(1 + e^-1) = 0.31326
    assert math.isclose(out.loss.item(), 0.3132617, rel_tol=1e-6)
    assert out.accuracy.item() == 1.0 and math.isclose(out.margin.item(), 1.0) and out.pairs.item() == 1


def test_k2_loss_when_the_worse_response_scores_higher():
    out = ranking_loss(torch.tensor([[0.0, 2.0]]), torch.tensor([[0, 1]]), torch.ones(1, 2, dtype=torch.bool))
    assert math.isclose(out.loss.item(), _nls(-2.0), rel_tol=1e-6)  # 2.126928
    assert out.accuracy.item() == 0.0 and math.isclose(out.margin.item(), -2.0)


def test_k4_loss_is_the_mean_of_its_six_pairwise_losses():
    scores = [0.3, -1.2, 2.0, 0.7]
    ranks = [1, 3, 0, 2]  # best to worst: response 2, 0, 3, 1
    out = ranking_loss(torch.tensor([scores]), torch.tensor([ranks]), torch.ones(1, 4, dtype=torch.bool))
    pairs = [(2, 0), (2, 3), (2, 1), (0, 3), (0, 1), (3, 1)]  # (winner, loser), C(4,2) = 6
    expected = sum(_nls(scores[winner] - scores[loser]) for winner, loser in pairs) / 6
    assert math.isclose(out.loss.item(), expected, rel_tol=1e-6)
    # By hand: margins 1.7, 1.3, 3.2, -0.4, 1.5, 1.9 -> log(1+e^-m) = .16779 .24096 .03995 .91302 .20141 .13939
    assert math.isclose(out.loss.item(), 1.702516 / 6, rel_tol=1e-4)
    # 0.3 vs 0.7: response 0 (rank 1) beats 3 (rank 2) but scores lower -> 5 of 6 pairs right.
    assert math.isclose(out.accuracy.item(), 5 / 6, rel_tol=1e-6)
    pair_losses = [
        ranking_loss(
            torch.tensor([[scores[winner], scores[loser]]]), torch.tensor([[0, 1]]), torch.ones(1, 2, dtype=torch.bool)
        ).loss.item()
        for winner, loser in pairs
    ]
    assert math.isclose(out.loss.item(), sum(pair_losses) / 6, rel_tol=1e-6)


def test_varying_k_pads_and_averages_per_prompt():
    scores = torch.tensor([[1.0, 0.0, 9.9], [0.2, 0.4, -0.3]])  # 9.9 is padding, must not count
    ranks = torch.tensor([[0, 1, 0], [1, 0, 2]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    out = ranking_loss(scores, ranks, valid)
    first = _nls(1.0)
    second = (_nls(0.4 - 0.2) + _nls(0.4 + 0.3) + _nls(0.2 + 0.3)) / 3
    assert math.isclose(out.loss.item(), (first + second) / 2, rel_tol=1e-6)
    assert out.pairs.item() == 4


def test_ties_give_no_pair():
    pairs = preference_pairs(torch.tensor([[0, 1, 1]]), torch.ones(1, 3, dtype=torch.bool))
    assert pairs.sum().item() == 2 and not pairs[0, 1, 2] and not pairs[0, 2, 1]


def test_gradient_pushes_winner_up_and_loser_down():
    scores = torch.tensor([[0.0, 0.0, 0.0]], requires_grad=True)
    ranking_loss(scores, torch.tensor([[2, 0, 1]]), torch.ones(1, 3, dtype=torch.bool)).loss.backward()
    grad = scores.grad[0]
    assert grad[1] < 0 < grad[0] and math.isclose(grad.sum().item(), 0.0, abs_tol=1e-7)


def test_collate_scores_each_response_once_and_scatters_back():
    examples = [
        RankingExample([5, 6], [[7, 1], [8, 9, 1]], [1, 0]),
        RankingExample([5], [[7, 1], [8, 1], [9, 1]], [0, 2, 1]),
    ]
    batch = collate_rankings(examples, pad_id=0)
    assert batch["input_ids"].shape == (5, 5)  # N = 2 + 3 sequences, one row each
    assert batch["input_ids"][1].tolist() == [5, 6, 8, 9, 1] and batch["input_ids"][0].tolist() == [0, 5, 6, 7, 1]
    assert batch["valid"].tolist() == [[True, True, False], [True, True, True]]
    grid = scatter_scores(torch.arange(5.0), batch["slot"], batch["ranks"].shape)
    assert grid.tolist() == [[0.0, 1.0, 0.0], [2.0, 3.0, 4.0]]
