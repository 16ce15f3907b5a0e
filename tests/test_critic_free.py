"""Critic-free PPO (issue 27): ppo.advantage rloo / grpo — the advantage math against independent computations
and TRL's expressions, the config's refusals, and runs on a tiny model that never create, run, optimise,
checkpoint or write a value role, and resume exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_rlhf.config.recipe import load_recipe
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.metrics import read_metrics
from lora_rlhf.models import forward
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.ppo.advantages import grpo_advantages, per_token, rloo_advantages, sequence_returns
from lora_rlhf.ppo.config import RewardsConfig
from lora_rlhf.ppo.losses import kl_loss
from lora_rlhf.ppo.optimize import add_advantages
from lora_rlhf.ppo.rewards import RunningMoments
from lora_rlhf.ppo.rollout import Rollout
from lora_rlhf.ppo.trainer import train_ppo
from tests.test_ppo import config, digit_fraction, make_stack

SCORES = torch.tensor([1.0, 3.0, 2.0, 6.0, -1.0, -1.0, -1.0, -1.0])  # two prompts x 4 samples


def test_rloo_is_each_return_minus_the_mean_of_its_siblings():
    expected = []
    for i, r in enumerate(SCORES.tolist()):
        group = range(i - i % 4, i - i % 4 + 4)
        others = [SCORES[j].item() for j in group if j != i]
        expected.append(r - sum(others) / len(others))
    assert torch.allclose(rloo_advantages(SCORES, 4), torch.tensor(expected))
    # TRL's RLOOTrainer (trl/trainer/rloo_trainer.py, _generate_and_score_completions), no unscorable rows:
    grouped_rewards = SCORES.view(-1, 4)
    grouped_sum = grouped_rewards.sum(dim=1, keepdim=True)
    baselines = ((grouped_sum - grouped_rewards) / (4 - 1)).view(-1)
    assert torch.allclose(rloo_advantages(SCORES, 4), SCORES - baselines)
    assert torch.allclose(rloo_advantages(SCORES, 4).view(-1, 4).sum(dim=1), torch.zeros(2), atol=1e-6)


def test_grpo_normalises_each_prompts_scores_by_their_mean_and_unbiased_std():
    first = SCORES[:4].tolist()
    mean = sum(first) / 4
    std = (sum((x - mean) ** 2 for x in first) / 3) ** 0.5
    expected = [(x - mean) / (std + 1e-4) for x in first] + [0.0] * 4  # an all-equal group: 0, not NaN
    assert torch.allclose(grpo_advantages(SCORES, 4), torch.tensor(expected), atol=1e-6)
    # TRL's GRPOTrainer, scale_rewards="group" (trl/trainer/grpo_trainer.py): nanstd is the unbiased std.
    mean_grouped = SCORES.view(-1, 4).mean(dim=1).repeat_interleave(4)
    std_grouped = SCORES.view(-1, 4).std(dim=1).repeat_interleave(4)
    assert torch.allclose(grpo_advantages(SCORES, 4), (SCORES - mean_grouped) / (std_grouped + 1e-4))
    with pytest.raises(ValueError, match="groups of >= 2"):
        grpo_advantages(SCORES, 3)


def test_grpo_kl_term_is_k3_and_pulls_the_policy_toward_the_reference():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    out = kl_loss(logprobs, ref, mask, kl_coef=0.1)
    # TRL's GRPOTrainer: per_token_kl = exp(ref - logp) - (ref - logp) - 1
    trl = torch.exp(ref - logprobs) - (ref - logprobs) - 1
    assert out.kl.item() == pytest.approx(trl[0, :2].mean().item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(0.1 * out.kl.item(), rel=1e-6)
    out.loss.backward()
    # d/dlogp of k3 = 1 - exp(ref - logp): positive where the policy is above the reference, and 0 on padding.
    assert logprobs.grad[0, 0] > 0 and logprobs.grad[0, 1] < 0 and logprobs.grad[0, 2] == 0


def _rollout(scores: torch.Tensor, kl_per_token: float) -> Rollout:
    """8 rows (2 prompts x 4 samples) of 3 response tokens, the last row's third token padding."""
    mask = torch.ones(8, 3)
    mask[-1, 2] = 0
    logprobs = torch.full((8, 3), -1.0)
    return Rollout(
        input_ids=torch.zeros(8, 5, dtype=torch.long),
        attention_mask=torch.ones(8, 5),
        response_mask=mask,
        prompt_width=2,
        logprobs=logprobs,
        ref_logprobs=logprobs - kl_per_token,
        values=None,
        scores=scores,
        entropy=torch.zeros(8, 3),
        finished=torch.ones(8, dtype=torch.bool),
        prompts=[""] * 8,
        responses=[""] * 8,
    )


def test_rloo_baselines_the_whole_kl_penalised_return_and_grpo_the_score():
    rewards = RewardsConfig(whiten_advantages=False)
    beta, kl = 0.5, 0.2  # k1 per token: 0.2, so each row pays beta * 0.2 * its length
    rollout = _rollout(SCORES, kl)
    figures = add_advantages(rollout, beta, rewards, RunningMoments(), 4, "rloo")
    lengths = rollout.response_mask.sum(dim=1)
    returns = SCORES - beta * kl * lengths  # eq. 2 for one sample: r(x, y) - beta * sum_t KL_t
    assert torch.allclose(
        sequence_returns(-beta * kl * rollout.response_mask, rollout.response_mask), -beta * kl * lengths
    )
    expected = per_token(rloo_advantages(returns, 4), rollout.response_mask)
    assert torch.allclose(rollout.advantages, expected, atol=1e-6) and rollout.returns is None
    assert rollout.advantages[-1, 2] == 0 and figures["zero_std_groups"] == 0.0
    assert "value_mean" not in figures and "explained_variance" not in figures

    rollout = _rollout(SCORES, kl)
    figures = add_advantages(rollout, beta, rewards, RunningMoments(), 4, "grpo")
    assert torch.allclose(rollout.advantages, per_token(grpo_advantages(SCORES, 4), rollout.response_mask), atol=1e-6)
    assert figures["zero_std_groups"] == 0.5  # the second prompt's samples all scored -1
    assert figures["kl"] == pytest.approx(kl * lengths.mean().item())  # the KL is still measured and logged


def test_whitening_defaults_on_for_gae_and_rloo_and_off_for_grpo():
    def whiten(advantage: str, *extra: str) -> bool:
        overrides = [f"ppo.advantage={advantage}", "ppo.rewards.score_baseline=none", *extra]
        return load_recipe(None, overrides).ppo.rewards.whiten_advantages

    assert whiten("gae") and whiten("rloo") and not whiten("grpo")
    assert whiten("grpo", "ppo.rewards.whiten_advantages=true")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["ppo.advantage=rloo", "ppo.samples_per_prompt=1", "ppo.rewards.score_baseline=none"],
            "ppo.samples_per_prompt: 1 must be >= 2 with advantage 'rloo'",
        ),
        (["ppo.advantage=grpo"], "ppo.rewards.score_baseline: 'prompt_mean' must be 'none' with advantage 'grpo'"),
        (
            ["ppo.advantage=rloo", "ppo.rewards.score_baseline=none", "ppo.rewards.gamma=0.9"],
            "ppo.rewards.gamma: 0.9 must be 1.0 with advantage 'rloo'",
        ),
        (["ppo.advantage=a2c"], "ppo.advantage: 'a2c' is not one of gae, rloo, grpo"),
    ],
)
def test_incoherent_critic_free_settings_are_one_line_errors(overrides, message):
    with pytest.raises(LoraRlhfError) as info:
        load_recipe(None, overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def _no_value_passes(stack: RoleStack, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a critic-free run ran the value role")

    monkeypatch.setattr(forward, "response_values", refuse)
    frozen = forward.frozen_scores

    def frozen_without_value(*args, with_value: bool = True, **kwargs):
        assert not with_value
        return frozen(*args, with_value=with_value, **kwargs)

    monkeypatch.setattr(forward, "frozen_scores", frozen_without_value)


def _critic_free(tmp_path, advantage: str, **overrides):
    settings = dict(advantage=advantage, rollout_batch_size=4, samples_per_prompt=2, rewards={"kl_coef": 0.05})
    return config(tmp_path, **(settings | overrides))


@pytest.mark.parametrize("advantage", ["rloo", "grpo"])
def test_a_critic_free_run_never_creates_runs_optimises_or_writes_a_value_role(
    tiny_llama, tmp_path, monkeypatch, advantage
):
    stack = make_stack(tiny_llama)
    _no_value_passes(stack, monkeypatch)
    sft = [p.detach().clone() for p in stack.role_parameters("sft")]
    train_ppo(stack, _critic_free(tmp_path, advantage), tmp_path / "run", reward_fn=digit_fraction)

    assert not stack.has_role("value") and set(stack.roles) >= {"sft", "reward", "policy"}
    run = tmp_path / "run"
    assert (run / "adapters" / "policy" / "adapter_model.safetensors").is_file()
    assert not (run / "adapters" / "value").exists()
    for checkpoint in (run / "checkpoints" / "ppo").iterdir():
        names = {p.name for p in checkpoint.iterdir()} | {p.name for p in (checkpoint / "roles").iterdir()}
        assert "policy" in names and "optim-policy.pt" in names
        assert not {"value", "optim-value.pt", "optim-value_scheduler.pt"} & names, names
    rows = read_metrics(run / "metrics" / "ppo.jsonl")
    assert {"reward", "kl", "kl_coef", "policy_loss", "clipfrac", "zero_std_groups"} <= set(rows[-1])
    assert not {"value_loss", "value_grad_norm", "lr_value", "explained_variance"} & set(rows[-1])
    assert ("kl_loss" in rows[-1]) == (advantage == "grpo")
    assert all(torch.equal(a, b) for a, b in zip(sft, stack.role_parameters("sft")))
    policy = torch.cat([p.flatten() for p in stack.role_parameters("policy")])
    assert not torch.equal(policy, torch.cat([p.flatten() for p in sft]))  # the policy moved


def test_a_critic_free_run_resumes_bit_exactly(tiny_llama, tmp_path):
    cfg = _critic_free(tmp_path, "rloo")
    train_ppo(make_stack(tiny_llama), cfg, tmp_path / "full", reward_fn=digit_fraction)
    calls = {"n": 0}

    def stop_at_step_3(prompts, responses):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return digit_fraction(prompts, responses)

    with pytest.raises(KeyboardInterrupt):
        train_ppo(make_stack(tiny_llama), cfg, tmp_path / "resumed", reward_fn=stop_at_step_3)
    train_ppo(make_stack(tiny_llama), cfg, tmp_path / "resumed", resume=True, reward_fn=digit_fraction)
    full = read_metrics(tmp_path / "full" / "metrics" / "ppo.jsonl")
    resumed = read_metrics(tmp_path / "resumed" / "metrics" / "ppo.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(full, resumed):
        for key in ("reward", "kl", "policy_loss", "kl_coef", "returns_mean"):
            assert a[key] == b[key], (a["step"], key)
    a = load_file(str(tmp_path / "full" / "adapters" / "policy" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "adapters" / "policy" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "resumed" / "adapters" / "value").exists()


def test_the_plan_drops_the_value_adapter_its_optimizer_and_its_passes():
    from lora_rlhf.plan import estimate
    from lora_rlhf.plan.phases import format_plan, plan_recipe
    from tests.test_plan import SHAPE

    base = ["ppo.rewards.score_baseline=none", "model.quantization=nf4"]
    plans = {a: plan_recipe(load_recipe(None, [*base, f"ppo.advantage={a}"]), SHAPE) for a in ("gae", "rloo")}
    gae, rloo = ({p.name: p for p in plans[a].phases} for a in ("gae", "rloo"))
    rm_r = load_recipe(None, []).rm.lora.r
    for name in ("ppo generate", "ppo score", "ppo train"):
        # exactly one adapter of the RM's rank and its head, and their gradients and AdamW moments
        assert gae[name].adapters - rloo[name].adapters == estimate.adapter_bytes(SHAPE, rm_r, 1, 1)
        assert gae[name].trained_state - rloo[name].trained_state == estimate.trained_state_bytes(SHAPE, rm_r, 1, 1)
    assert rloo["ppo score"].activations < gae["ppo score"].activations  # rows stacked twice, not three times
    ppo_peak = {a: max(p.total for p in plans[a].phases if p.name.startswith("ppo")) for a in plans}
    assert ppo_peak["rloo"] < ppo_peak["gae"]
    assert gae["sft step"] == rloo["sft step"] and gae["eval"] == rloo["eval"]
    time_gae, time_rloo = plans["gae"].ppo_compute, plans["rloo"].ppo_compute
    assert (time_gae.score_passes, time_rloo.score_passes, time_gae.train_roles, time_rloo.train_roles) == (3, 2, 2, 1)
    assert time_rloo.generate == time_gae.generate and time_rloo.total < time_gae.total
    assert "ppo.advantage rloo" in format_plan(plans["rloo"]) and "(2 passes)" in format_plan(plans["rloo"])


def test_the_llama_recipe_plans_a_lower_peak_and_fewer_flops_with_rloo():
    from lora_rlhf.config.recipe import RECIPES
    from lora_rlhf.plan.phases import plan_recipe
    from lora_rlhf.plan.shapes import model_shape

    shape = model_shape(str(Path(__file__).parent.parent / "scripts" / "model_configs" / "llama-3.1-8b.json"))
    sizes = ["ppo.samples_per_prompt=4", "ppo.rollout_batch_size=16"]
    plans = {
        a: plan_recipe(load_recipe(str(RECIPES / "llama3.1-8b-hh.yaml"), [*sizes, f"ppo.advantage={a}"]), shape)
        for a in ("gae", "rloo")
    }
    assert plans["rloo"].peak.total < plans["gae"].peak.total  # ppo generate, 18.46 vs 19.14 GiB on CUDA
    assert plans["rloo"].ppo_compute.total < 0.75 * plans["gae"].ppo_compute.total


def test_frozen_scores_without_a_value_role_stack_reference_and_reward_only(tiny_llama, tmp_path):
    from lora_rlhf.ppo.trainer import setup_roles

    stack = make_stack(tiny_llama)
    setup_roles(stack, _critic_free(tmp_path, "rloo"))
    assert not stack.has_role("value")
    torch.manual_seed(3)
    for role in ("sft", "reward"):
        for p in stack.role_parameters(role):
            p.data.normal_(std=0.05)
    ids = torch.randint(5, 90, (3, 11))  # three distinct prompts: the stacked path, not the shared prefix
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    with stack.training(dropout=False):
        two = forward.frozen_scores(stack, ids, mask, 6, temperature=0.7, with_value=False)
        assert two is not None and set(two) == {"ref_logprobs", "scores"}
        reference = forward.response_logprobs(stack, "reference", ids, mask, 6, temperature=0.7).logprobs
        torch.testing.assert_close(two["ref_logprobs"], reference, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            two["scores"], forward.response_rewards(stack, "reward", ids, mask, 6), atol=1e-5, rtol=1e-5
        )
