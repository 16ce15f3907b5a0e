"""DPO's losses (lora_rlhf/dpo/loss.py): TRL's sigmoid loss at K = 2, Plackett–Luce by hand, ties, padding."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from lora_rlhf.dpo.loss import pairwise_sigmoid, plackett_luce, ranking_dpo_loss, sigmoid_loss


def _trl_sigmoid(per_token: torch.Tensor, mask: torch.Tensor, ref_chosen, ref_rejected, beta: float):
    """TRL's own DPOTrainer._compute_loss (loss_type "sigmoid", precomputed reference log-probs) on given per-token
    log-probs: (2B, T) rows [chosen..., rejected...], as its collator stacks them. Returns (loss, its metrics)."""
    trl = pytest.importorskip("trl")  # the dev extra installs it: it is the reference here, not a dependency
    trainer_cls = trl.DPOTrainer
    width = per_token.shape[1]
    outputs = SimpleNamespace(
        log_probs=per_token * mask,  # what its fused LM head returns: 0 where the labels are -100
        entropy=torch.zeros_like(per_token),
        mean_logits=torch.zeros_like(per_token),
        is_top1=torch.zeros_like(per_token, dtype=torch.bool),
    )
    accelerator = SimpleNamespace(device=per_token.device, gather=lambda t: t, gather_for_metrics=lambda t: t)
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=accelerator,
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=["sigmoid"],
        loss_weights=[1.0],
        beta=beta,
        use_weighting=False,
        _metrics={"train": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    # completion_mask has one column more than the per-token log-probs (position t predicts token t + 1).
    inputs = {
        "input_ids": torch.zeros((per_token.shape[0], width + 1), dtype=torch.long),
        "attention_mask": torch.ones((per_token.shape[0], width + 1), dtype=torch.long),
        "completion_mask": torch.cat([torch.zeros((per_token.shape[0], 1), dtype=torch.long), mask.long()], 1),
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    loss = trainer_cls._compute_loss(trainer, lambda **_: outputs, inputs, False)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_k2_loss_gradients_and_metrics_equal_trls_sigmoid_dpo(beta):
    torch.manual_seed(0)
    b, t = 6, 5
    mask = (torch.rand(2 * b, t) < 0.8).float()
    mask[:, 0] = 1.0
    per_token = (-torch.rand(2 * b, t) * 3).requires_grad_()
    ref = (per_token.detach() * mask).sum(1) + torch.randn(2 * b)
    ref_chosen, ref_rejected = ref[:b], ref[b:]
    expected, metrics = _trl_sigmoid(per_token, mask, ref_chosen, ref_rejected, beta)
    (expected_grad,) = torch.autograd.grad(expected, per_token)

    ours_tokens = per_token.detach().clone().requires_grad_()
    logps = (ours_tokens * mask).sum(1)
    policy = torch.stack([logps[:b], logps[b:]], 1)  # (B, 2): chosen, rejected
    reference = torch.stack([ref_chosen, ref_rejected], 1)
    ranks, valid = torch.tensor([[0, 1]] * b), torch.ones(b, 2, dtype=torch.bool)
    for loss_type in ("sigmoid", "plackett_luce"):
        out = ranking_dpo_loss(policy, reference, ranks, valid, beta, loss_type)
        (grad,) = torch.autograd.grad(out.loss, ours_tokens, retain_graph=True)
        torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-8)
        assert float(out.chosen_rewards) == pytest.approx(metrics["rewards/chosen"], rel=1e-6)
        assert float(out.rejected_rewards) == pytest.approx(metrics["rewards/rejected"], rel=1e-6)
        assert float(out.margins) == pytest.approx(metrics["rewards/margins"], rel=1e-6, abs=1e-7)
        assert float(out.accuracies) == pytest.approx(metrics["rewards/accuracies"])
    assert 0 < metrics["rewards/accuracies"] < 1  # a batch where some pairs are wrong: the figure can differ
    per_pair = sigmoid_loss(policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1], beta)
    torch.testing.assert_close(per_pair.mean(), expected)


def _plackett_luce_by_hand(rewards: list[float], ranks: list[int]) -> float:
    """−log P(ranking) under Plackett–Luce (DPO eq. 18), in plain Python floats, responses in rank order."""
    order = sorted(range(len(ranks)), key=lambda i: ranks[i])
    total = 0.0
    for k, i in enumerate(order):
        total += rewards[i] - math.log(sum(math.exp(rewards[j]) for j in order[k:]))
    return -total


def test_plackett_luce_equals_the_ranking_likelihood_computed_by_hand():
    rankings = [([0.3, -1.2, 2.0, 0.1], [2, 0, 3, 1]), ([1.5, 0.5, -0.5], [0, 1, 2]), ([0.7, -0.2], [1, 0])]
    rewards = torch.zeros(3, 4)
    ranks = torch.zeros(3, 4, dtype=torch.long)
    valid = torch.zeros(3, 4, dtype=torch.bool)
    for b, (r, k) in enumerate(rankings):
        rewards[b, : len(r)], ranks[b, : len(k)], valid[b, : len(k)] = torch.tensor(r), torch.tensor(k), True
    rewards[1, 3] = float("nan")  # padding may hold anything
    per_prompt = plackett_luce(rewards, ranks, valid)
    expected = [_plackett_luce_by_hand(r, k) for r, k in rankings]
    torch.testing.assert_close(per_prompt, torch.tensor(expected), rtol=1e-6, atol=1e-6)


def test_plackett_luce_is_a_distribution_over_the_k_factorial_rankings():
    rewards = [0.4, -0.9, 1.3, 0.2]
    probabilities = []
    for perm in itertools.permutations(range(4)):
        ranks = torch.tensor([list(perm)])
        nll = plackett_luce(torch.tensor([rewards]), ranks, torch.ones(1, 4, dtype=torch.bool))
        probabilities.append(math.exp(-float(nll)))
    assert sum(probabilities) == pytest.approx(1.0, rel=1e-6)


def test_loss_from_log_probs_uses_beta_times_the_log_ratio():
    policy = torch.tensor([[-3.0, -5.0, -4.0]])
    reference = torch.tensor([[-4.0, -4.0, -4.0]])
    beta = 0.2
    out = ranking_dpo_loss(policy, reference, torch.tensor([[0, 2, 1]]), torch.ones(1, 3, dtype=torch.bool), beta)
    expected = _plackett_luce_by_hand([0.2, -0.2, 0.0], [0, 2, 1])
    assert float(out.loss) == pytest.approx(expected, rel=1e-6)
    # Pairs (0 > 2), (0 > 1), (1 > 2): winners' rewards 0.2, 0.2, 0.0; losers' -0.2, 0.0, -0.2.
    assert float(out.chosen_rewards) == pytest.approx(0.4 / 3)
    assert float(out.rejected_rewards) == pytest.approx(-0.4 / 3)
    assert float(out.accuracies) == 1.0 and int(out.pairs) == 3 and int(out.prompts) == 1


def test_ties_give_no_comparison_in_either_loss():
    r = torch.tensor([[0.5, -0.3, 1.1]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    # [0, 1, 1]: response 0 beats both, the tied pair (1, 2) says nothing.
    top = float(plackett_luce(r, torch.tensor([[0, 1, 1]]), valid))
    assert top == pytest.approx(-(0.5 - math.log(math.exp(0.5) + math.exp(-0.3) + math.exp(1.1))))
    # [0, 0, 1]: each of the tied pair beats response 2, neither the other.
    bottom = float(plackett_luce(r, torch.tensor([[0, 0, 1]]), valid))
    expected = -(0.5 - math.log(math.exp(0.5) + math.exp(1.1))) - (-0.3 - math.log(math.exp(-0.3) + math.exp(1.1)))
    assert bottom == pytest.approx(expected)
    pairs = float(pairwise_sigmoid(r, torch.tensor([[0, 0, 1]]), valid))
    sig = torch.nn.functional.logsigmoid
    assert pairs == pytest.approx(-float(sig(torch.tensor(0.5 - 1.1)) + sig(torch.tensor(-0.3 - 1.1))) / 2)
    # An all-tied prompt is no term of the mean, in the loss or the pair counts.
    ranks = torch.tensor([[0, 1, 2], [0, 0, 0]])
    out = ranking_dpo_loss(torch.cat([r, r]), torch.zeros(2, 3), ranks, torch.ones(2, 3, dtype=torch.bool), 1.0)
    alone = ranking_dpo_loss(r, torch.zeros(1, 3), ranks[:1], valid, 1.0)
    assert int(out.prompts) == 1 and int(out.pairs) == 3
    torch.testing.assert_close(out.loss, alone.loss)


def test_sigmoid_for_k_above_2_averages_every_untied_pair_per_prompt():
    r = torch.tensor([[0.3, -1.2, 2.0, 0.1]])
    ranks = torch.tensor([[2, 0, 3, 1]])
    sig = torch.nn.functional.logsigmoid
    pairs = [(i, j) for i in range(4) for j in range(4) if ranks[0, i] < ranks[0, j]]
    expected = -sum(float(sig(r[0, i] - r[0, j])) for i, j in pairs) / 6
    out = ranking_dpo_loss(r, torch.zeros(1, 4), ranks, torch.ones(1, 4, dtype=torch.bool), 1.0, "sigmoid")
    assert float(out.loss) == pytest.approx(expected, rel=1e-6)


def test_gradients_are_finite_with_nan_padding_and_push_the_ranking():
    policy = torch.tensor([[-2.0, -2.0, float("nan")], [-1.0, -3.0, -2.0]], requires_grad=True)
    reference = torch.tensor([[-2.0, -2.0, 0.0], [-2.0, -2.0, -2.0]])
    ranks = torch.tensor([[1, 0, 0], [0, 2, 1]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    for loss_type in ("plackett_luce", "sigmoid"):
        out = ranking_dpo_loss(policy, reference, ranks, valid, 0.1, loss_type)
        (grad,) = torch.autograd.grad(out.loss, policy)
        assert torch.isfinite(out.loss) and torch.isfinite(grad).all()
        assert grad[0, 2] == 0 and grad[0, 1] < 0 < grad[0, 0]  # descent raises the better, lowers the worse
        assert grad[1, 0] < 0 < grad[1, 1]
