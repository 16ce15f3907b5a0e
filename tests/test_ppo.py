"""The PPO stage on a tiny random model: it learns a programmatic reward, leaves frozen roles alone,
resumes exactly, and stops on NaN or runaway KL."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_rlhf.config.loader import build, merge
from lora_rlhf.config.recipe import load_recipe
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.metrics import read_metrics
from lora_rlhf.models import forward
from lora_rlhf.models.base import BaseModelConfig
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.models.sequences import stop_mask
from lora_rlhf.ppo.config import MOVED_KEYS, PPOConfig, RewardsConfig, SamplingConfig
from lora_rlhf.ppo.hooks import PHASES, PhaseEvent, PhaseHook, phase
from lora_rlhf.ppo.rollout import EncodedPrompt, Rollout, padding_free_columns, sample, score
from lora_rlhf.ppo.trainer import train_ppo

PROMPTS = ["sort the numbers 3 1 2", "reverse the words hello world", "count letters", "answer with yes or no"]


def digit_fraction(prompts: list[str], responses: list[str]) -> list[float]:
    """A programmatic reward: the fraction of a response's characters that are digits."""
    return [sum(c.isdigit() for c in r) / max(1, len(r)) for r in responses]


def make_stack(folder: str, quantization: str = "none") -> RoleStack:
    """A tiny model whose output head is scaled up so its next-token distribution is not flat (as a
    pretrained model's is not); LoRA on the layers below can then move it within a few dozen steps."""
    stack = RoleStack.load(BaseModelConfig(name_or_path=folder, quantization=quantization, device="cpu"))
    with torch.no_grad():
        stack.lm_head.weight.mul_(10.0)
    torch.manual_seed(0)
    stack.add_role("sft")
    stack.add_role("reward")
    return stack


def prompts_file(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS * 4))
    return {"path": str(path)}


def demos_file(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "demos.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "completion": "1 2 3"}) + "\n" for p in PROMPTS))
    return {"path": str(path)}


def config(tmp_path: Path, **overrides) -> PPOConfig:
    """A small PPO config; `overrides` are the YAML section's keys, nested sections merged (optim={...})."""
    settings = dict(
        prompts=prompts_file(tmp_path),
        steps=4,
        rollout_batch_size=8,
        mini_batch_size=4,
        micro_batch_size=2,
        sampling={"max_new_tokens": 8},
        ptx={"coef": 0.0},
        optim={"policy_learning_rate": 3e-3, "value_learning_rate": 3e-3},
        ppo_epochs=2,
        save_steps=2,
    )
    return build(PPOConfig, merge(settings, overrides))


def snapshot(stack: RoleStack) -> dict[str, torch.Tensor]:
    """The base's weights and the frozen roles' (sft, reward adapter + head)."""
    state = {f"base.{n}": p.detach().clone() for n, p in stack.model.named_parameters() if "lora_" not in n}
    for role in ("sft", "reward"):
        state.update({f"{role}.{i}": p.detach().clone() for i, p in enumerate(stack.role_parameters(role))})
    return state


def test_ppo_raises_a_programmatic_reward_with_bounded_kl_and_frozen_roles(tiny_llama, tmp_path):
    stack = make_stack(tiny_llama)
    before = snapshot(stack)
    cfg = config(
        tmp_path,
        steps=30,
        rollout_batch_size=16,
        mini_batch_size=8,
        micro_batch_size=8,
        sampling={"max_new_tokens": 16},
        rewards={"kl_coef": 0.001},
        save_steps=30,
    )
    train_ppo(stack, cfg, tmp_path / "run", reward_fn=digit_fraction)

    rows = read_metrics(tmp_path / "run" / "metrics" / "ppo.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 31))
    early = sum(r["reward"] for r in rows[:5]) / 5
    late = sum(r["reward"] for r in rows[-5:]) / 5
    assert late > max(3 * early, 0.15), (early, late)
    assert all(r["kl"] < 150 for r in rows)  # a 16-token response; the penalty keeps it finite and bounded
    for key in (
        "reward",
        "kl",
        "kl_coef",
        "entropy",
        "policy_loss",
        "value_loss",
        "clipfrac",
        "response_length",
        "approx_kl",
        "explained_variance",
        "time_generate",
        "time_score",
        "time_train",
    ):
        assert key in rows[0], key
    after = snapshot(stack)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    sft = torch.cat([p.flatten() for p in stack.role_parameters("sft")])
    policy = torch.cat([p.flatten() for p in stack.role_parameters("policy")])
    assert not torch.equal(sft, policy)  # the policy started as a copy of sft and moved


def test_value_starts_as_a_copy_of_the_reward_model_with_its_head(tiny_llama, tmp_path):
    stack = make_stack(tiny_llama)
    with torch.no_grad():
        stack.head("reward").linear.weight.add_(0.5)
    frozen = config(tmp_path, steps=1, optim={"policy_learning_rate": 1e-12, "value_learning_rate": 1e-12})
    train_ppo(stack, frozen, tmp_path / "run", reward_fn=digit_fraction)
    value_head = load_file(str(tmp_path / "run" / "adapters" / "value" / "head.safetensors"))
    reward_w = stack.head("reward").linear.weight
    assert torch.allclose(next(iter(v for k, v in value_head.items() if k.endswith("weight"))), reward_w, atol=1e-6)


def test_resume_matches_an_uninterrupted_run(tiny_llama, tmp_path):
    cfg = config(tmp_path, ptx={"data": demos_file(tmp_path), "coef": 0.5, "batch_size": 2})
    train_ppo(make_stack(tiny_llama), cfg, tmp_path / "full", reward_fn=digit_fraction)

    calls = {"n": 0}

    def stop_at_step_3(prompts, responses):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return digit_fraction(prompts, responses)

    with pytest.raises(KeyboardInterrupt):
        train_ppo(make_stack(tiny_llama), cfg, tmp_path / "resumed", reward_fn=stop_at_step_3)
    assert not (tmp_path / "resumed" / "adapters" / "policy").exists()
    train_ppo(make_stack(tiny_llama), cfg, tmp_path / "resumed", resume=True, reward_fn=digit_fraction)

    full = read_metrics(tmp_path / "full" / "metrics" / "ppo.jsonl")
    resumed = read_metrics(tmp_path / "resumed" / "metrics" / "ppo.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(full, resumed):
        for key in ("reward", "kl", "policy_loss", "value_loss", "ptx_loss", "kl_coef"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)
    for role in ("policy", "value"):
        a = load_file(str(tmp_path / "full" / "adapters" / role / "adapter_model.safetensors"))
        b = load_file(str(tmp_path / "resumed" / "adapters" / role / "adapter_model.safetensors"))
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_nan_reward_stops_with_the_step_and_saves_the_evidence(tiny_llama, tmp_path):
    calls = {"n": 0}

    def nan_at_step_2(prompts, responses):
        calls["n"] += 1
        return [float("nan") if calls["n"] == 2 else 0.5 for _ in responses]

    with pytest.raises(LoraRlhfError, match=r"step 2: reward is nan"):
        train_ppo(make_stack(tiny_llama), config(tmp_path), tmp_path / "run", reward_fn=nan_at_step_2)
    failed = tmp_path / "run" / "checkpoints" / "ppo" / "failed-step-00000002"
    assert (failed / "rollout.safetensors").is_file() and (
        failed / "roles" / "policy" / "adapter_config.json"
    ).is_file()
    assert "reward is nan" in json.loads((failed / "failure.json").read_text())["problem"]
    assert not (tmp_path / "run" / "adapters" / "policy").exists()  # no output that looks complete


def test_an_update_not_taken_stops_the_run_as_a_nan_does(tiny_llama, tmp_path):
    # train/optim.py's one policy: Adam's first step at this rate (lr / (1 - beta1) = 1e39) overflows float32, so
    # clip_and_step takes no step; without clipping no norm shows it, and PPO went on without ever updating.
    cfg = config(tmp_path, steps=1, optim={"policy_learning_rate": 1.0e38, "max_grad_norm": 0.0})
    with pytest.raises(LoraRlhfError, match=r"ppo stopped at step 1: policy_update is inf"):
        train_ppo(make_stack(tiny_llama), cfg, tmp_path / "run", reward_fn=digit_fraction)
    assert not (tmp_path / "run" / "adapters" / "policy").exists()


def test_kl_ceiling_stops_the_run(tiny_llama, tmp_path):
    cfg = config(tmp_path, rewards={"kl_ceiling": 1e-6}, optim={"policy_learning_rate": 1e-2})
    with pytest.raises(LoraRlhfError, match=r"step \d+: kl .* exceeds ppo.rewards.kl_ceiling"):
        train_ppo(make_stack(tiny_llama), cfg, tmp_path / "run", reward_fn=digit_fraction)


def test_nf4_base_runs_ppo_with_the_reward_role(tiny_llama, tmp_path):
    stack = make_stack(tiny_llama, quantization="nf4")
    summary = train_ppo(stack, config(tmp_path, steps=2, save_steps=1), tmp_path / "run")
    assert summary["steps"] == 2
    assert (tmp_path / "run" / "adapters" / "value" / "head.safetensors").is_file()


def test_ppo_needs_the_sft_and_reward_roles(tiny_llama, tmp_path):
    stack = RoleStack.load(BaseModelConfig(name_or_path=tiny_llama, quantization="none"))
    stack.add_role("sft")
    with pytest.raises(LoraRlhfError, match="ppo needs the 'reward' role"):
        train_ppo(stack, config(tmp_path), tmp_path / "run")


def test_response_mask_stops_after_the_first_eos():
    eos, pad = 1, 0
    ids = torch.tensor([[5, 6, eos, 7, pad], [eos, 5, 5, 5, 5], [5, 5, 5, 5, 5], [5, eos, eos, eos, eos]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    assert torch.equal(stop_mask(ids, {eos}), expected)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "ppo.rollout_batch_size=3",
            "rollout_batch_size: 3 x samples_per_prompt 4 must be a multiple of mini_batch_size",
        ),
        ("ppo.mini_batch_size=8", "must be a multiple of micro_batch_size"),
        ("ppo.optim.clip_range=1.5", "ppo.optim.clip_range: 1.5 must be in"),
        ("ppo.rewards.kl_control=pid", "ppo.rewards.kl_control: 'pid' is not one of fixed, adaptive"),
        ("ppo.kl_coeff=0.1", "unknown key 'ppo.kl_coeff'"),
        ("ppo.sampling.temperature=-1", "ppo.sampling.temperature: -1.0 must be > 0"),
        ("ppo.ptx.batch_size=0", "ppo.ptx.batch_size: 0 must be a positive integer"),
        ("ppo.optim.adam_betas=[0.9]", "ppo.optim.adam_betas: [0.9] must be two numbers in [0, 1)"),
        ("ppo.kl_coef=0.05", "ppo.kl_coef moved to ppo.rewards.kl_coef"),
        ("ppo.ptx_coef=1", "ppo.ptx_coef moved to ppo.ptx.coef"),
        ("ppo.temperature=0.7", "ppo.temperature moved to ppo.sampling.temperature"),
        ("ppo.policy_learning_rate=1e-5", "ppo.policy_learning_rate moved to ppo.optim.policy_learning_rate"),
        ("ppo.ptx.path=x.jsonl", "ppo.ptx.path moved to ppo.ptx.data.path"),
        ("ppo.samples_per_prompt=0", "ppo.samples_per_prompt: 0 must be a positive integer"),
        ("ppo.samples_per_prompt=1", "ppo.samples_per_prompt: 1 must be >= 2 with rewards.score_baseline"),
        ("ppo.rewards.score_baseline=median", "ppo.rewards.score_baseline: 'median' is not one of none, prompt_mean"),
    ],
)
def test_bad_ppo_settings_are_one_line_errors(override, message):
    overrides = [override] + (["ppo.micro_batch_size=3"] if "micro_batch" in message else [])
    with pytest.raises(LoraRlhfError) as info:
        load_recipe(None, overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_nested_overrides_reach_their_sections():
    ppo = load_recipe(
        None,
        [
            "ppo.rewards.kl_coef=0.05",
            "ppo.sampling.temperature=0.7",
            "ppo.optim.clip_range=0.1",
            "ppo.ptx.coef=2",
            "ppo.ptx.data.path=text.jsonl",
        ],
    ).ppo
    assert ppo.rewards.kl_coef == 0.05 and ppo.sampling.temperature == 0.7 and ppo.optim.clip_range == 0.1
    assert ppo.ptx.coef == 2.0 and ppo.ptx.data.path == "text.jsonl" and ppo.ptx.enabled
    assert ppo.rewards.gamma == 1.0 and ppo.sampling.max_new_tokens == 24  # the rest of the demo recipe's sections stay


def test_a_recipe_file_with_old_flat_keys_names_their_new_place(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("ppo:\n  steps: 2\n  temperature: 0.7\n  ptx: {path: demos.jsonl}\n")
    with pytest.raises(LoraRlhfError) as info:
        load_recipe(old)
    assert str(info.value).startswith("ppo.temperature moved to ppo.sampling.temperature (in ") and "\n" not in str(
        info.value
    )


@pytest.mark.parametrize("old", sorted(MOVED_KEYS))
def test_every_moved_key_is_refused_and_its_new_key_accepted(old):
    with pytest.raises(LoraRlhfError, match=f"^ppo.{old} moved to ppo.{MOVED_KEYS[old]} "):
        load_recipe(None, [f"ppo.{old}=1"])
    section, _, name = f"ppo.{MOVED_KEYS[old]}".rpartition(".")
    node = load_recipe(None).ppo
    for part in section.split(".")[1:]:
        node = getattr(node, part)
    assert name in {f.name for f in dataclasses.fields(node)}


def test_a_fresh_value_role_is_reproducible_from_the_seed(tiny_llama, tmp_path):
    for name in ("a", "b"):
        stack = make_stack(tiny_llama)
        torch.rand(7 if name == "a" else 11)  # whatever drew from the RNG before must not change the run
        train_ppo(stack, config(tmp_path, steps=1, value_init="fresh"), tmp_path / name, reward_fn=digit_fraction)
    a = load_file(str(tmp_path / "a" / "adapters" / "value" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "adapters" / "value" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rollouts_ignore_sampling_options_from_the_models_generation_config(tiny_llama):
    """A model's own repetition penalty (Qwen2.5 ships one) would bias samples away from pi_old unseen."""
    from lora_rlhf.ppo.config import SamplingConfig
    from lora_rlhf.ppo.rollout import EncodedPrompt, sample

    stack = make_stack(tiny_llama)
    stack.copy_role("sft", "policy")
    with torch.no_grad():
        stack.lm_head.weight.mul_(3.0)
    prompts = [EncodedPrompt([5, 6, 7], "x")] * 2
    runs = []
    for penalty in (1.0, 5.0):
        stack.base_model.generation_config.repetition_penalty = penalty
        torch.manual_seed(0)
        runs.append(sample(stack, prompts, SamplingConfig(max_new_tokens=24)).input_ids)
    stack.base_model.generation_config.repetition_penalty = 1.0
    assert torch.equal(runs[0], runs[1])


def test_missing_eos_penalty_lowers_every_return_of_a_truncated_response():
    from lora_rlhf.ppo.optimize import add_advantages
    from lora_rlhf.ppo.rewards import RunningMoments
    from lora_rlhf.ppo.rollout import Rollout

    zeros = torch.zeros(2, 3)
    rollout = Rollout(
        input_ids=torch.zeros(2, 5, dtype=torch.long),
        attention_mask=torch.ones(2, 5, dtype=torch.long),
        response_mask=torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]),
        prompt_width=2,
        logprobs=zeros,
        ref_logprobs=zeros,
        values=zeros,
        scores=torch.tensor([0.5, 0.5]),
        entropy=zeros,
        finished=torch.tensor([True, False]),
        prompts=["a", "b"],
        responses=["x", "y"],
    )
    settings = dict(gamma=1.0, lam=1.0, whiten_advantages=False)
    add_advantages(rollout, 0.0, RewardsConfig(**settings), RunningMoments())
    plain = rollout.returns.clone()
    figures = add_advantages(rollout, 0.0, RewardsConfig(missing_eos_penalty=1.0, **settings), RunningMoments())
    assert figures["truncated"] == 0.5
    assert torch.equal(rollout.returns[0], plain[0])
    assert torch.allclose(rollout.returns[1], plain[1] - 1.0)


def test_ppo_updates_use_gradient_checkpointing_when_the_base_asks_for_it(tiny_llama, tmp_path, monkeypatch):
    """transformers checkpoints a layer only in train mode: PPO must not run its updates in eval mode."""
    import transformers.modeling_utils
    from torch.utils.checkpoint import checkpoint

    calls = []

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counting_checkpoint)
    stack = RoleStack.load(BaseModelConfig(name_or_path=tiny_llama, quantization="none", gradient_checkpointing=True))
    torch.manual_seed(0)
    stack.add_role("sft")
    stack.add_role("reward")
    train_ppo(stack, config(tmp_path, steps=1, save_steps=1), tmp_path / "run", reward_fn=digit_fraction)
    layers = stack.base_model.config.num_hidden_layers
    micro_batches = 2 * 8 // 2  # ppo_epochs x rollout_batch_size / micro_batch_size
    assert len(calls) == 2 * micro_batches * layers  # policy and value forwards with grad, every layer checkpointed


# The rollout's old log-probs come from the generation pass: they must equal a recomputation, so PPO's
# first ratio is 1 and nothing else in the update changes.


def _prompts(stack) -> list[EncodedPrompt]:
    texts = ["sort the numbers 3 1 2", "hi", "reverse the words hello world please", "count"]
    return [EncodedPrompt(stack.tokenizer(t, add_special_tokens=False).input_ids, t) for t in texts]


def _recomputed(stack, sampled, temperature: float):
    return score(
        stack,
        sampled.input_ids,
        sampled.attention_mask,
        sampled.prompt_width,
        temperature=temperature,
        micro_batch_size=3,
        use_reward_role=False,
    )


@pytest.mark.parametrize("quantization, tolerance", [("none", 1e-5), ("nf4", 1e-4)])
def test_generation_logprobs_equal_a_recomputation(tiny_llama, quantization, tolerance):
    stack = make_stack(tiny_llama, quantization)
    stack.copy_role("sft", "policy")
    stack.copy_role("reward", "value")
    with torch.no_grad():  # a policy unlike the reference, so a mix-up of roles would show
        for p in stack.role_parameters("policy"):
            p.add_(torch.randn_like(p) * 0.1)
    torch.manual_seed(0)
    sampled = sample(stack, _prompts(stack), SamplingConfig(max_new_tokens=12, temperature=0.7))
    assert sampled.logprobs.shape == sampled.response_mask.shape == sampled.entropy.shape
    again = _recomputed(stack, sampled, 0.7)
    mask = sampled.response_mask.bool()
    assert mask.sum() > 10 and (sampled.prompt_width > min(len(p.ids) for p in _prompts(stack)))  # left padding
    assert (sampled.logprobs - again["logprobs"])[mask].abs().max() < tolerance
    assert (sampled.entropy - again["entropy"])[mask].abs().max() < tolerance
    # and they are the policy's, not the reference's
    assert (sampled.logprobs - again["ref_logprobs"])[mask].abs().max() > 1e-3


def test_the_first_ppo_ratio_is_one_with_generation_logprobs(tiny_llama, tmp_path):
    stack = make_stack(tiny_llama)
    cfg = config(tmp_path, steps=1, rollout_batch_size=8, mini_batch_size=8, micro_batch_size=4, ppo_epochs=1)
    assert cfg.sampling.logprobs_from_generation
    train_ppo(stack, cfg, tmp_path / "run", reward_fn=digit_fraction)
    (row,) = read_metrics(tmp_path / "run" / "metrics" / "ppo.jsonl")
    assert row["ratio"] == pytest.approx(1.0, abs=1e-5) and row["clipfrac"] == 0.0
    assert abs(row["approx_kl"]) < 1e-6


def test_samples_per_prompt_rolls_out_consecutive_groups_and_centres_each_prompts_scores(tiny_llama, tmp_path):
    seen: list[list[str]] = []

    def prompt_level(prompts: list[str], responses: list[str]) -> list[float]:
        """A reward that depends only on the prompt: the leave-one-out baseline must cancel it exactly."""
        seen.append(list(prompts))
        return [float(len(p)) for p in prompts]

    cfg = config(
        tmp_path,
        steps=2,
        rollout_batch_size=2,
        samples_per_prompt=4,
        mini_batch_size=4,
        ppo_epochs=1,
        rewards={"score_baseline": "prompt_mean", "kl_coef": 0.0, "lam": 1.0, "whiten_advantages": False},
    )
    assert cfg.rollout_sequences == 8
    train_ppo(make_stack(tiny_llama), cfg, tmp_path / "run", reward_fn=prompt_level)
    for batch in seen:  # 2 prompts x 4 samples, each prompt's samples consecutive
        assert len(batch) == 8 and all(batch[i] == batch[i - i % 4] for i in range(8)), batch
    rows = read_metrics(tmp_path / "run" / "metrics" / "ppo.jsonl")
    # Without KL (and lam 1: returns are sums of rewards), a reward that only tells prompts apart leaves
    # every return at 0 once the baseline is off it.
    assert all(abs(r["returns_mean"]) < 1e-6 for r in rows), [r["returns_mean"] for r in rows]
    assert rows[0]["reward"] > 10  # the raw score (the prompts' lengths) is still what is logged
    with pytest.raises(LoraRlhfError, match="x samples_per_prompt 3 must be a multiple of mini_batch_size"):
        config(tmp_path, rollout_batch_size=2, samples_per_prompt=3, mini_batch_size=4)


def test_padding_free_columns_cut_what_is_padding_in_every_row():
    #            prompt (P = 4, left-padded) | response (A = 4, right-padded)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0, 0, 0]])
    assert padding_free_columns(mask, 4) == (1, 6)  # column 0 and the last two response columns are padding
    assert padding_free_columns(mask[:1], 4) == (2, 6)
    empty = torch.tensor([[0, 1, 1, 0, 0]])  # no response token at all: one response column is kept
    assert padding_free_columns(empty, 3) == (1, 4)


def test_a_trimmed_micro_batch_keeps_every_real_token_and_its_per_token_figures():
    mask = torch.tensor([[0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]])
    per_token = torch.arange(6.0).reshape(2, 3)
    rollout = Rollout(
        input_ids=torch.arange(12).reshape(2, 6), attention_mask=mask, response_mask=mask[:, 3:].float(),
        prompt_width=3, logprobs=per_token, ref_logprobs=per_token, values=per_token, scores=torch.ones(2),
        entropy=per_token, finished=torch.ones(2, dtype=torch.bool), prompts=["a", "b"], responses=["x", "y"],
        advantages=per_token, returns=per_token,
    )  # fmt: skip
    first = rollout.select(torch.tensor([0])).trimmed()
    assert first.prompt_width == 2 and first.input_ids.tolist() == [[1, 2, 3]]
    assert first.response_mask.tolist() == [[1.0]] and first.advantages.tolist() == [[0.0]]
    both = rollout.trimmed()
    assert both.prompt_width == 3 and both.input_ids.shape == (2, 5) and both.values.shape == (2, 2)


def test_scoring_in_trimmed_micro_batches_equals_scoring_the_whole_rollout(tiny_llama):
    stack = make_stack(tiny_llama)
    stack.copy_role("sft", "policy")
    stack.copy_role("reward", "value")
    torch.manual_seed(0)
    sampled = sample(stack, _prompts(stack), SamplingConfig(max_new_tokens=12, temperature=1.0))
    p = sampled.prompt_width
    for row, length in ((0, 3), (1, 12), (2, 7), (3, 1)):  # responses that end at different steps
        sampled.input_ids[row, p + length :] = stack.tokenizer.pad_token_id
        sampled.attention_mask[row, p + length :] = 0
        sampled.response_mask[row, length:] = 0
    options = dict(temperature=1.0, use_reward_role=True)
    whole = score(stack, sampled.input_ids, sampled.attention_mask, sampled.prompt_width, micro_batch_size=4, **options)
    one = score(stack, sampled.input_ids, sampled.attention_mask, sampled.prompt_width, micro_batch_size=1, **options)
    mask = sampled.response_mask.bool()
    for name in ("logprobs", "entropy", "ref_logprobs", "values"):
        assert one[name].shape == whole[name].shape
        assert (one[name] - whole[name])[mask].abs().max() < 1e-5, name
    torch.testing.assert_close(one["scores"], whole["scores"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_frozen_scores_in_one_forward_equal_one_pass_per_role(tiny_llama, quantization):
    # Reference, value and reward as one stacked forward (models/row_adapters.py) against their own passes.
    from lora_rlhf.ppo.trainer import setup_roles

    stack = make_stack(tiny_llama, quantization)
    setup_roles(stack, PPOConfig(prompts="unused"))
    torch.manual_seed(3)
    for role in ("sft", "reward", "value"):
        for p in stack.role_parameters(role):
            p.data.normal_(std=0.05)
    ids = torch.randint(5, 90, (4, 11))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # a left-padded prompt
    mask[1, -3:] = 0  # a response that stopped early
    with stack.training(dropout=False):  # as rollouts score: train mode, dropout off
        one = forward.frozen_scores(stack, ids, mask, 6, temperature=0.7)
        assert one is not None
        tol = dict(atol=1e-5, rtol=1e-5) if quantization == "none" else dict(atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(
            one["ref_logprobs"],
            forward.response_logprobs(stack, "reference", ids, mask, 6, temperature=0.7).logprobs,
            **tol,
        )
        torch.testing.assert_close(one["values"], forward.response_values(stack, "value", ids, mask, 6), **tol)
        torch.testing.assert_close(one["scores"], forward.response_rewards(stack, "reward", ids, mask, 6), **tol)
        assert not torch.allclose(one["values"][:, :1], one["ref_logprobs"][:, :1])
        repeated = ids.clone()
        repeated[1, :6], mask[1, :6] = repeated[0, :6], mask[0, :6]  # two samples of one prompt: shared prefix instead
        assert forward.frozen_scores(stack, repeated, mask, 6) is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"max_prompt_length": 500, "sampling": {"max_new_tokens": 13}},
            r"ppo\.max_prompt_length \+ ppo\.sampling\.max_new_tokens: 513 tokens is more than this model's "
            r"position limit \(512, its config's max_position_embeddings\)",
        ),
        (
            {"ptx": {"coef": 1.0, "max_length": 1024}},
            r"ppo\.ptx\.max_length: 1024 tokens is more than this model's position limit \(512",
        ),
    ],
)
def test_lengths_past_the_position_limit_stop_before_anything_runs(tiny_llama, tmp_path, overrides, message):
    """Issue 29: lengths past max_position_embeddings were accepted without a word."""
    stack = RoleStack.load(BaseModelConfig(name_or_path=tiny_llama, quantization="none"))
    overrides = overrides | ({"ptx": {**overrides["ptx"], "data": demos_file(tmp_path)}} if "ptx" in overrides else {})
    with pytest.raises(LoraRlhfError, match=message):
        train_ppo(stack, config(tmp_path, **overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


class Recorder(PhaseHook):
    """Every phase event, in order, as ("begin" | "end", phase, micro)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, int | None]] = []

    def on_phase_begin(self, event: PhaseEvent) -> None:
        self.events.append(("begin", event.phase, event.micro))

    def on_phase_end(self, event: PhaseEvent) -> None:
        self.events.append(("end", event.phase, event.micro))


def test_phase_hooks_fire_once_per_phase_in_order_and_change_nothing(tiny_llama, tmp_path):
    cfg = config(tmp_path, steps=1, rollout_batch_size=4, mini_batch_size=4, micro_batch_size=4, ppo_epochs=1)
    first, second = Recorder(), Recorder()
    train_ppo(make_stack(tiny_llama), cfg, tmp_path / "hooked", reward_fn=digit_fraction, hooks=[first, second])
    train_ppo(make_stack(tiny_llama), cfg, tmp_path / "plain", reward_fn=digit_fraction)

    micro = {"policy_backward": 0, "value_backward": 0}
    expected = [(edge, name, micro.get(name)) for name in PHASES for edge in ("begin", "end")]
    assert first.events == expected and second.events == expected
    (hooked,) = read_metrics(tmp_path / "hooked" / "metrics" / "ppo.jsonl")
    (plain,) = read_metrics(tmp_path / "plain" / "metrics" / "ppo.jsonl")
    untimed = [k for k in plain if not k.startswith("time_")]
    assert {k: hooked[k] for k in untimed} == {k: plain[k] for k in untimed}


def test_phase_hooks_see_each_micro_batch_and_no_value_pass_when_critic_free(tiny_llama, tmp_path):
    cfg = config(
        tmp_path,
        steps=1,
        advantage="rloo",
        samples_per_prompt=2,
        rollout_batch_size=2,
        mini_batch_size=4,
        micro_batch_size=2,
        ppo_epochs=1,
    )
    recorder = Recorder()
    train_ppo(make_stack(tiny_llama), cfg, tmp_path / "run", reward_fn=digit_fraction, hooks=[recorder])
    began = [(name, micro) for edge, name, micro in recorder.events if edge == "begin"]
    assert began == [
        ("generate", None),
        ("score", None),
        ("advantages", None),
        ("policy_backward", 0),
        ("policy_backward", 1),
        ("optimizer_step", None),
    ]


def test_without_hooks_a_phase_is_one_shared_do_nothing_block_and_a_failed_phase_does_not_end():
    assert phase((), "generate") is phase((), "optimizer_step")
    recorder = Recorder()
    with pytest.raises(RuntimeError), phase([recorder], "score"):
        raise RuntimeError("scoring failed")
    assert recorder.events == [("begin", "score", None)]
