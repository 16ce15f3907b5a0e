"""PPO math against hand-computed values: GAE, KL-penalised rewards, missing-EOS penalty, clipped and ptx losses,
whitening, KL control."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lora_rlhf.ppo.advantages import gae, whiten
from lora_rlhf.ppo.kl_control import AdaptiveKLController, FixedKLController, make_kl_controller
from lora_rlhf.ppo.losses import explained_variance, policy_loss, ptx_loss, value_loss
from lora_rlhf.ppo.rewards import (
    RunningMoments,
    leave_one_out_baseline,
    penalize_missing_eos,
    penalized_rewards,
    transform_scores,
)
from lora_rlhf.ppo.stats import masked_mean, masked_var


def _prefix_mask(lengths: list[int], n_positions: int) -> torch.Tensor:
    return (torch.arange(n_positions)[None, :] < torch.tensor(lengths)[:, None]).float()


def _gae_reference(values, rewards, lengths, gamma, lam):
    """GAE written plainly, one row and one token at a time, in Python floats."""
    advantages = [[0.0] * len(row) for row in values]
    for b, length in enumerate(lengths):
        next_advantage = 0.0
        for t in reversed(range(length)):
            next_value = values[b][t + 1] if t + 1 < length else 0.0
            delta = rewards[b][t] + gamma * next_value - values[b][t]
            next_advantage = delta + gamma * lam * next_advantage
            advantages[b][t] = next_advantage
    returns = [
        [a + v if t < n else 0.0 for t, (a, v) in enumerate(zip(ra, rv))]
        for ra, rv, n in zip(advantages, values, lengths)
    ]
    return torch.tensor(advantages), torch.tensor(returns)


# --- GAE ---------------------------------------------------------------------------------------------


def test_gae_three_tokens_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])  # the 4th position is padding: its value must not leak
    rewards = torch.tensor([[0.0, 0.0, 1.0, 50.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    out = gae(values, rewards, mask, gamma=0.9, lam=0.5)
    # δ_2 = 1 + 0.9·0 − 3 = −2.0;  δ_1 = 0 + 0.9·3 − 2 = 0.7;  δ_0 = 0 + 0.9·2 − 1 = 0.8
    # Â_2 = −2.0;  Â_1 = 0.7 + 0.45·(−2.0) = −0.2;  Â_0 = 0.8 + 0.45·(−0.2) = 0.71
    torch.testing.assert_close(out.advantages, torch.tensor([[0.71, -0.2, -2.0, 0.0]]))
    torch.testing.assert_close(out.returns, torch.tensor([[1.71, 1.8, 1.0, 0.0]]))


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 1.0)])
def test_gae_matches_a_plain_loop_on_padded_rows(gamma, lam):
    gen = torch.Generator().manual_seed(0)
    lengths = [7, 1, 4, 0, 7, 2]
    mask = _prefix_mask(lengths, 7)
    values = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    rewards = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    expected_adv, expected_ret = _gae_reference(values.tolist(), rewards.tolist(), lengths, gamma, lam)
    out = gae(values, rewards, mask, gamma=gamma, lam=lam)
    torch.testing.assert_close(out.advantages, expected_adv.double())
    torch.testing.assert_close(out.returns, expected_ret.double())
    assert (out.advantages[mask == 0] == 0).all() and (out.returns[mask == 0] == 0).all()
    # the single-token row: Â_0 = r_0 − V_0, no bootstrap past the end
    torch.testing.assert_close(out.advantages[1, 0], rewards[1, 0] - values[1, 0])


def test_gae_ignores_whatever_padding_holds():
    mask = _prefix_mask([3, 1], 4)
    values, rewards = torch.randn(2, 4), torch.randn(2, 4)
    out = gae(values, rewards, mask, gamma=0.99, lam=0.95)
    junk = torch.where(mask.bool(), values, torch.full_like(values, float("nan")))
    again = gae(junk, torch.where(mask.bool(), rewards, torch.full_like(rewards, 1e6)), mask, gamma=0.99, lam=0.95)
    torch.testing.assert_close(again.advantages, out.advantages)
    torch.testing.assert_close(again.returns, out.returns)


# --- KL-penalised rewards (InstructGPT eq. 2) ----------------------------------------------------------


def test_penalized_rewards_k1_by_hand():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-1.0, 5.0, 5.0, 5.0], [0.0, 0.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, -9.0], [-1.2, 0.0, 0.0, 0.0], [-3.0, -3.0, -3.0, -3.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    scores = torch.tensor([2.0, -1.0, 7.0])
    out = penalized_rewards(logprobs, ref, scores, mask, kl_coef=0.1)
    # KL_t = logp − ref: row 0 [0.5, −1.0, 0.0]; row 1 [0.2]; row 2 empty
    torch.testing.assert_close(out.kl, torch.tensor([[0.5, -1.0, 0.0, 0.0], [0.2, 0.0, 0.0, 0.0], [0.0] * 4]))
    # r_t = −0.1·KL_t, plus the score at the last valid token only
    expected = torch.tensor([[-0.05, 0.1, 2.0, 0.0], [-0.02 - 1.0, 0.0, 0.0, 0.0], [0.0] * 4])
    torch.testing.assert_close(out.rewards, expected)


def test_penalized_rewards_k3_by_hand_and_nonnegative():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    out = penalized_rewards(logprobs, ref, torch.tensor([0.0]), mask, kl_coef=1.0, kl_estimator="k3")
    # log r = ref − logp = [−0.5, 1.0, 0.0];  (e^{log r} − 1) − log r
    expected = torch.tensor([[math.exp(-0.5) - 0.5, math.e - 2.0, 0.0, 0.0]])  # 0.10653, 0.71828
    torch.testing.assert_close(out.kl, expected)
    torch.testing.assert_close(out.rewards, -expected)
    gen = torch.Generator().manual_seed(1)
    many = penalized_rewards(
        torch.randn(8, 16, generator=gen),
        torch.randn(8, 16, generator=gen),
        torch.zeros(8),
        torch.ones(8, 16),
        kl_coef=0.1,
        kl_estimator="k3",
    )
    assert (many.kl >= 0).all()


def test_penalized_rewards_rejects_an_unknown_estimator():
    with pytest.raises(ValueError, match="'k2'"):
        penalized_rewards(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1), torch.ones(1, 2), 0.1, "k2")


def test_missing_eos_penalty_lowers_only_the_truncated_responses():
    scores = torch.tensor([0.5, 0.5, -2.0], dtype=torch.float64)
    finished = torch.tensor([True, False, False])
    out = penalize_missing_eos(scores, finished, 1.5)
    torch.testing.assert_close(out, torch.tensor([0.5, -1.0, -3.5], dtype=torch.float64))
    torch.testing.assert_close(penalize_missing_eos(scores, finished, 0.0), scores)


# --- policy and value losses (PPO, Schulman et al. 2017) -----------------------------------------------


def _policy_case(advantages: list[float], ratios: list[float]):
    logprobs = torch.tensor([[math.log(r) for r in ratios] + [3.0]], requires_grad=True)  # last: padding
    old = torch.zeros(1, len(ratios) + 1)
    mask = torch.tensor([[1.0] * len(ratios) + [0.0]])
    out = policy_loss(logprobs, old, torch.tensor([advantages + [9.0]]), mask, clip_range=0.2)
    out.loss.backward()
    return out, logprobs.grad[0]


def test_policy_loss_on_both_sides_of_the_clip_boundary():
    out, grad = _policy_case([2.0, 2.0, -1.0, -1.0], [1.5, 1.1, 0.5, 0.9])
    # per-token −min(ρA, clip(ρ, 0.8, 1.2)A):
    #   A=2,  ρ=1.5: −min(3.0, 2.4) = −2.4 (clipped)     A=2,  ρ=1.1: −2.2
    #   A=−1, ρ=0.5: −min(−0.5, −0.8) = 0.8 (clipped)     A=−1, ρ=0.9: 0.9
    assert math.isclose(out.loss.item(), (-2.4 - 2.2 + 0.8 + 0.9) / 4, rel_tol=1e-6)  # −0.725
    assert math.isclose(out.clipfrac.item(), 0.5)
    assert math.isclose(out.ratio_mean.item(), 1.0, rel_tol=1e-6)
    half_sq = [0.5 * math.log(r) ** 2 for r in (1.5, 1.1, 0.5, 0.9)]
    assert math.isclose(out.approx_kl.item(), sum(half_sq) / 4, rel_tol=1e-5)
    # d/dlogp of −ρA is −ρA (ρ = e^{logp − old}); clipped tokens and padding get no gradient
    torch.testing.assert_close(grad, torch.tensor([0.0, -2.2 / 4, 0.0, 0.9 / 4, 0.0]))
    assert not out.clipfrac.requires_grad and not out.approx_kl.requires_grad


def test_policy_loss_lower_clip_does_not_bind_for_positive_advantage():
    out, grad = _policy_case([2.0], [0.5])
    # −min(1.0, 1.6) = −1.0: the unclipped branch, so the gradient flows
    assert math.isclose(out.loss.item(), -1.0, rel_tol=1e-6) and out.clipfrac.item() == 0.0
    torch.testing.assert_close(grad, torch.tensor([-1.0, 0.0]))


def test_value_loss_clipped_and_unclipped_by_hand():
    values = torch.tensor([[2.0, 1.1, 2.0, 40.0]], requires_grad=True)
    old = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    returns = torch.tensor([[3.0, 3.0, 1.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    out = value_loss(values, old, returns, mask, clip_range=0.2)
    # V=2.0, R=3.0: clip(V) = 1.2, max((2−3)², (1.2−3)²) = 3.24 (clipped)
    # V=1.1, R=3.0: inside the clip, (1.1−3)² = 3.61
    # V=2.0, R=1.5: clip(V) = 1.2, max(0.25, 0.09) = 0.25 (unclipped)
    assert math.isclose(out.loss.item(), 0.5 * (3.24 + 3.61 + 0.25) / 3, rel_tol=1e-6)  # 1.18333
    assert math.isclose(out.clipfrac.item(), 1 / 3, rel_tol=1e-6)
    out.loss.backward()
    # d/dV ½·mean (V − R)² = (V − R)/3 where unclipped; 0 where the clipped branch won, and on padding
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, (1.1 - 3.0) / 3, 0.5 / 3, 0.0]]))


def test_ptx_loss_is_gamma_times_the_mean_nll_of_the_target_tokens():
    logprobs = torch.tensor([[-1.0, -2.0, float("nan")], [-3.0, -6.0, -4.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])  # row 1: a prompt token, then the completion
    out = ptx_loss(logprobs, mask, ptx_coef=0.5)
    # mean −log π over the 4 target tokens = (1 + 2 + 6 + 4) / 4 = 3.25; the loss is γ times that
    assert math.isclose(out.lm_loss.item(), 3.25) and math.isclose(out.loss.item(), 1.625)
    assert not out.lm_loss.requires_grad
    out.loss.backward()
    # d/dlogp of −γ·mean = −γ/4 on target tokens; prompt and padding (even NaN) get none
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-0.125, -0.125, 0.0], [0.0, -0.125, -0.125]]))


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 4.0, 0.0], [3.0, 0.0, 0.0, 0.0]])
    mask = _prefix_mask([3, 1], 4)
    assert math.isclose(explained_variance(returns.clone(), returns, mask), 1.0)
    constant = torch.full_like(returns, 2.5)  # the mean of the valid returns: no better than a constant
    assert math.isclose(explained_variance(constant, returns, mask), 0.0, abs_tol=1e-6)
    assert math.isnan(explained_variance(returns, torch.ones_like(returns), mask))


# --- masked statistics and whitening -------------------------------------------------------------------


def test_masked_mean_and_var_ignore_padding_and_empty_rows():
    x = torch.tensor([[1.0, 2.0, 3.0, float("inf")], [5.0, float("nan"), 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert masked_mean(x, mask).item() == 2.0
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([2.0, 0.0]))
    assert masked_var(x, mask).item() == 1.0
    assert math.isclose(masked_var(x, mask, unbiased=False).item(), 2 / 3, rel_tol=1e-6)
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0


def test_whiten_ignores_padding_and_normalises_valid_entries():
    gen = torch.Generator().manual_seed(2)
    mask = _prefix_mask([5, 2, 8, 1], 8)
    x = torch.randn(4, 8, generator=gen, dtype=torch.float64) * 3 + 1.5
    out = whiten(x, mask)
    changed_pads = whiten(torch.where(mask.bool(), x, torch.full_like(x, 1e3)), mask)
    torch.testing.assert_close(changed_pads, out)
    valid = out[mask.bool()]
    assert abs(valid.mean().item()) < 1e-9 and math.isclose(valid.var().item(), 1.0, rel_tol=1e-6)
    assert (out[~mask.bool()] == 0).all()
    scaled = whiten(x, mask, shift_mean=False)[mask.bool()]
    assert math.isclose(scaled.mean().item(), x[mask.bool()].mean().item(), rel_tol=1e-9)
    assert math.isclose(scaled.var().item(), 1.0, rel_tol=1e-6)


# --- running moments and score transforms --------------------------------------------------------------


def test_running_moments_match_torch_over_concatenated_batches():
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(n, generator=gen) * 4 + 2 for n in (5, 1, 17, 3)]
    moments = RunningMoments()
    for batch in batches:
        moments.update(batch)
    everything = torch.cat(batches).double()
    assert moments.count == 26
    assert math.isclose(moments.mean, everything.mean().item(), rel_tol=1e-9)
    assert math.isclose(moments.std, everything.std().item(), rel_tol=1e-9)
    restored = RunningMoments()
    restored.load_state_dict(json.loads(json.dumps(moments.state_dict())))
    assert (restored.mean, restored.std, restored.count) == (moments.mean, moments.std, moments.count)


def test_transform_scores_normalises_then_clips():
    running = RunningMoments()
    scores = torch.tensor([1.0, 3.0, 5.0, 11.0])  # mean 5, unbiased std sqrt(56/3) = 4.3205
    out = transform_scores(scores, running=running, normalize=True)
    torch.testing.assert_close(out, (scores - 5.0) / math.sqrt(56 / 3))
    assert running.count == 4
    torch.testing.assert_close(transform_scores(scores, clip=4.0), torch.tensor([1.0, 3.0, 4.0, 4.0]))
    with pytest.raises(ValueError, match="RunningMoments"):
        transform_scores(scores, normalize=True)


def test_leave_one_out_baseline_by_hand():
    # Two prompts, three samples each: each score minus the mean of its two siblings.
    scores = torch.tensor([1.0, 2.0, 6.0, 10.0, 10.0, 13.0])
    expected = torch.tensor([1 - 4.0, 2 - 3.5, 6 - 1.5, 10 - 11.5, 10 - 11.5, 13 - 10.0])
    torch.testing.assert_close(leave_one_out_baseline(scores, 3), expected)
    # Equal samples carry no signal; a constant per prompt (its difficulty) is removed entirely.
    torch.testing.assert_close(leave_one_out_baseline(torch.tensor([4.0, 4.0, -1.0, -1.0]), 2), torch.zeros(4))
    shifted = leave_one_out_baseline(scores + torch.tensor([5.0] * 3 + [-7.0] * 3), 3)
    torch.testing.assert_close(shifted, expected)
    for bad_size in (1, 4):
        with pytest.raises(ValueError, match="groups"):
            leave_one_out_baseline(scores, bad_size)


# --- KL controllers (Ziegler et al. 2019 §2.2) ---------------------------------------------------------


def test_adaptive_kl_grows_above_target_shrinks_below_and_clips_at_20_percent():
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    ctl.update(current_kl=6.6, n_steps=1000)  # error 0.1 -> β · (1 + 0.1 · 0.1)
    assert math.isclose(ctl.value, 0.1 * 1.01)
    ctl.value = 0.1
    ctl.update(current_kl=60.0, n_steps=1000)  # error 9 clipped to 0.2 -> · 1.02
    assert math.isclose(ctl.value, 0.102)
    ctl.value = 0.1
    ctl.update(current_kl=0.0, n_steps=1000)  # error −1 clipped to −0.2 -> · 0.98
    assert math.isclose(ctl.value, 0.098)
    restored = make_kl_controller("adaptive", 0.5, target=6.0, horizon=10_000)
    restored.load_state_dict(json.loads(json.dumps(ctl.state_dict())))
    assert restored.value == ctl.value


def test_fixed_kl_stays_and_factory_validates():
    ctl = make_kl_controller("fixed", 0.05, target=None, horizon=10_000)
    assert isinstance(ctl, FixedKLController)
    ctl.update(current_kl=100.0, n_steps=1000)
    assert ctl.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05
    with pytest.raises(ValueError, match="target"):
        make_kl_controller("adaptive", 0.05, target=None, horizon=10_000)
    with pytest.raises(ValueError, match="'pid'"):
        make_kl_controller("pid", 0.05, target=6.0, horizon=10_000)  # type: ignore[arg-type]
