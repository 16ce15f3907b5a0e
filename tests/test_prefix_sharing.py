"""Encoding a prompt once for its K responses (forward.prefix_rewards) gives the rewards, and the gradients,
of encoding every prompt + response row in full, on every decoder family transformers ships."""

from __future__ import annotations

import types

import pytest
import torch

from lora_rlhf.data.batching import pad_left
from lora_rlhf.data.rankings import RankingExample
from lora_rlhf.models import engine, forward
from lora_rlhf.models.engine import shared_prompt_cache
from lora_rlhf.models.lora import LoraSettings
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.rm.batching import collate_rankings, collate_shared_prompts
from lora_rlhf.rm.trainer import ranking_collator, rm_loss

from tiny_architectures import ARCHITECTURES, tiny_causal_lm

PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12, 13, 14, 15, 16, 17, 18], [19, 20]]
RESPONSES = [[21, 22, 2], [23, 24, 25, 26, 27, 2], [28], [29, 30, 31, 2], [32, 33, 2]]
PROMPT_INDEX = [0, 0, 1, 1, 2]


def reward_stack(arch: str) -> RoleStack:
    stack = RoleStack(tiny_causal_lm(arch))
    stack.add_role("reward", LoraSettings(r=4, alpha=8, dropout=0.0))
    torch.manual_seed(1)
    for p in stack.role_parameters("reward"):  # LoRA B and the head start at zero: give every weight a gradient path
        torch.nn.init.normal_(p, std=0.1)
    return stack


def both_layouts(stack: RoleStack) -> tuple[torch.Tensor, torch.Tensor]:
    full_ids, full_mask = pad_left([PROMPTS[i] + r for i, r in zip(PROMPT_INDEX, RESPONSES)], 0)
    full = forward.rewards(stack, "reward", full_ids, full_mask)
    prompt_ids, prompt_mask = pad_left(PROMPTS, 0)
    width = max(map(len, RESPONSES))
    response_ids = torch.tensor([r + [0] * (width - len(r)) for r in RESPONSES])
    response_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in RESPONSES])
    shared = forward.prefix_rewards(
        stack, "reward", prompt_ids, prompt_mask, response_ids, response_mask, torch.tensor(PROMPT_INDEX)
    )
    return full, shared


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_prefix_rewards_equal_full_rows(arch):
    stack = reward_stack(arch)
    with torch.no_grad():
        full, shared = both_layouts(stack)
    assert full.std() > 1e-3  # the scores differ between responses, so equality below means something
    torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
def test_gradients_reach_the_prompt_through_the_shared_cache(arch):
    stack = reward_stack(arch)
    stack.set_trainable("reward")
    params = stack.role_parameters("reward")
    grads = []
    for layout in (0, 1):
        with stack.use("reward"):
            scores = both_layouts(stack)[layout]
            (scores * torch.arange(1.0, 6.0)).sum().backward()
        grads.append([p.grad.clone() for p in params])
        for p in params:
            p.grad = None
    assert any(g.abs().sum() > 0 for g in grads[0])
    for full, shared in zip(*grads):
        torch.testing.assert_close(shared, full, rtol=1e-4, atol=1e-5)


def test_rm_loss_gives_the_same_loss_and_stats_in_both_layouts():
    stack = reward_stack("llama")
    eos = 2
    examples = [
        RankingExample([5, 6, 7], [[8, eos], [9, 10, eos]], [1, 0]),
        RankingExample([5], [[11, eos], [12, 13, 14, eos], [15, eos], [16, 17, eos]], [2, 0, 3, 1]),
        RankingExample([6, 7], [[18, 19, eos], [20, eos], [21, eos]], [0, 2, 1]),
    ]
    with torch.no_grad():
        full = rm_loss(stack, collate_rankings(examples, 0))
        shared = rm_loss(stack, collate_shared_prompts(examples, 0))
    torch.testing.assert_close(shared.loss, full.loss, rtol=1e-5, atol=1e-6)
    assert shared.stats.keys() == full.stats.keys()
    for key in full.stats:
        assert shared.stats[key] == pytest.approx(full.stats[key], abs=1e-5)


def test_shared_batches_encode_each_prompt_once():
    examples = [RankingExample([5, 6, 7, 8], [[9, 2], [10, 11, 2], [12, 2]], [0, 2, 1])]
    batch = collate_shared_prompts(examples, 0)
    assert batch["prompt_ids"].shape == (1, 4)
    assert batch["response_ids"].shape == (3, 3)
    assert batch["response_mask"].sum() == 7  # the 3 responses' tokens, right-padded
    assert batch["prompt_index"].tolist() == [0, 0, 0]


def test_gradient_checkpointing_falls_back_to_full_rows():
    stack = reward_stack("llama")
    stack.tokenizer = types.SimpleNamespace(pad_token_id=0)  # a bare model: only the pad id is read
    examples = [RankingExample([5, 6], [[9, 2], [10, 2]], [0, 1])]
    assert "prompt_ids" in ranking_collator(stack)(examples)
    assert "prompt_ids" not in ranking_collator(stack, share_prompts=False)(examples)
    stack.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert "prompt_ids" not in ranking_collator(stack)(examples)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_decode_prefills_each_distinct_prompt_once_and_samples_as_without(arch, monkeypatch):
    stack = RoleStack(tiny_causal_lm(arch))
    stack.add_role("sft", LoraSettings(r=4, alpha=8, dropout=0.0))
    torch.manual_seed(1)
    for p in stack.role_parameters("sft"):
        torch.nn.init.normal_(p, std=0.1)
    ids, mask = pad_left([PROMPTS[i] for i in (0, 0, 1, 2, 2, 2)], 0)  # K samples of a prompt: equal rows
    options = dict(max_new_tokens=8, stop_ids=[], pad_id=0)
    prefilled = []

    def counted(stack, input_ids, attention_mask):
        cache = shared_prompt_cache(stack, input_ids, attention_mask)
        prefilled.append(cache.get_seq_length() if cache is not None else None)
        return cache

    monkeypatch.setattr("lora_rlhf.models.engine.shared_prompt_cache", counted)
    runs = {}
    for share in (True, False):
        torch.manual_seed(0)
        runs[share] = [
            engine.sample(stack, "sft", ids, mask, temperature=t, share_prompts=share, **options) for t in (0, 1)
        ]
    assert prefilled == [ids.shape[1] - 1] * 2  # the cache held all but the last prompt token; unshared: not asked
    for shared, plain in zip(runs[True], runs[False]):
        assert torch.equal(shared.sequences, plain.sequences)
    alone = engine.sample(stack, "sft", *pad_left([PROMPTS[2]], 0), temperature=0, **options)
    assert torch.equal(runs[True][0].sequences[-1, -8:], alone.sequences[0, -8:])


def test_decode_with_distinct_prompts_takes_the_plain_path():
    stack = RoleStack(tiny_causal_lm("llama"))
    ids, mask = pad_left(PROMPTS, 0)
    assert shared_prompt_cache(stack, ids, mask) is None


def test_eval_reward_scores_share_repeated_prompts_and_keep_the_scores(monkeypatch):
    from lora_rlhf.eval.scoring import reward_scores

    stack = reward_stack("qwen2")
    stack.tokenizer = types.SimpleNamespace(pad_token_id=0)
    sequences = [PROMPTS[i] + r for i, r in zip(PROMPT_INDEX, RESPONSES)] + [PROMPTS[2]]  # the last: empty response
    starts = [len(PROMPTS[i]) for i in PROMPT_INDEX] + [len(PROMPTS[2])]
    calls, prefix_rewards = [], forward.prefix_rewards
    monkeypatch.setattr(
        forward,
        "prefix_rewards",
        lambda stack, role, *args, **kw: calls.append(args[0].shape) or prefix_rewards(stack, role, *args, **kw),
    )
    full = reward_scores(stack, sequences, batch_size=4)
    shared = reward_scores(stack, sequences, batch_size=4, prompt_lengths=starts)
    # Batched by each prompt's longest response: prompt 2 (rows 4, 5: 3 tokens and empty), prompt 1 (rows 2, 3:
    # 4 tokens), then prompt 0 (rows 0, 1: 6 tokens). The first batch holds the empty response (nothing to
    # continue the cache with), so it is scored in full; the second shares prompt 0's encoding.
    assert calls == [(1, 5)]
    alone = [reward_scores(stack, [seq], batch_size=1)[0] for seq in sequences]
    assert shared == pytest.approx(alone, abs=1e-5) and full == pytest.approx(alone, abs=1e-5)


def test_length_grouped_order_keeps_a_prompts_rows_together_and_sorts_prompts_by_their_longest_response():
    from lora_rlhf.data.batching import length_grouped_order

    a, b, c = [1, 2], [3, 4, 5], [6]
    rows = [a + [9] * 5, b + [9], a + [9], c + [9] * 2, b + [9] * 2, c + [9] * 2]
    starts = [2, 3, 2, 1, 3, 1]
    # longest response: a 5, b 2, c 2 (ties: the prompt seen first comes first)
    assert length_grouped_order(rows, starts) == [1, 4, 3, 5, 0, 2]


# --- PPO rollout rows: [left-padded prompt | right-padded response], a prompt's samples in consecutive rows ----

ROLLOUT_PROMPTS = [0, 0, 1, 2, 2, 2]
ROLLOUT_RESPONSES = [[21, 22, 2], [23, 24, 25, 26, 27, 2], [28], [29, 30, 31, 2], [32, 33, 2], []]


def rollout_rows() -> tuple[torch.Tensor, torch.Tensor, int]:
    from lora_rlhf.data.batching import pad_right

    prompt_ids, prompt_mask = pad_left([PROMPTS[i] for i in ROLLOUT_PROMPTS], 0)
    response_ids, response_mask = pad_right([r or [0] for r in ROLLOUT_RESPONSES], 0)
    response_mask[-1] = 0  # the last sample is empty (EOS at once, or a cut): only the prompt is real
    ids = torch.cat([prompt_ids, response_ids], dim=1)
    return ids, torch.cat([prompt_mask, response_mask], dim=1), prompt_ids.shape[1]


def rollout_stack(arch: str) -> RoleStack:
    stack = RoleStack(tiny_causal_lm(arch))
    for role in ("policy", "value", "reward"):
        stack.add_role(role, LoraSettings(r=4, alpha=8, dropout=0.0))
    torch.manual_seed(1)
    for role in ("policy", "value", "reward"):
        for p in stack.role_parameters(role):
            torch.nn.init.normal_(p, std=0.1)
    return stack


def rollout_passes(stack: RoleStack, ids, mask, p) -> dict[str, torch.Tensor]:
    shared = {
        "logprobs": forward.response_logprobs(stack, "policy", ids, mask, p, temperature=0.7, with_entropy=True),
        "values": forward.response_values(stack, "value", ids, mask, p),
        "scores": forward.response_rewards(stack, "reward", ids, mask, p),
    }
    full = {
        "logprobs": forward.logprobs(stack, "policy", ids, mask, temperature=0.7, with_entropy=True, start=p - 1),
        "values": forward.values(stack, "value", ids, mask)[:, p - 1 : -1],
        "scores": forward.rewards(stack, "reward", ids, mask),
    }
    return {"shared": shared, "full": full}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_rollout_passes_encode_a_prompt_once_for_its_samples_and_equal_full_rows(arch, monkeypatch):
    stack = rollout_stack(arch)
    ids, mask, p = rollout_rows()
    encoded, prefix = [], forward.prefix_hidden_states
    monkeypatch.setattr(
        forward, "prefix_hidden_states", lambda stack, *args: encoded.append(args[0].shape[0]) or prefix(stack, *args)
    )
    with torch.no_grad():
        out = rollout_passes(stack, ids, mask, p)
    assert encoded == [3, 3, 3]  # three distinct prompts, once per pass (policy, value, reward)
    shared, full = out["shared"], out["full"]
    response = mask[:, p:].bool()
    for key in ("logprobs", "entropy"):
        got, want = getattr(shared["logprobs"], key), getattr(full["logprobs"], key)
        assert got.shape == want.shape == response.shape
        torch.testing.assert_close(got[response], want[response], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared["values"][response], full["values"][response], rtol=1e-5, atol=1e-5)
    assert full["scores"].std() > 1e-3
    torch.testing.assert_close(shared["scores"], full["scores"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
def test_rollout_gradients_are_those_of_full_rows(arch):
    stack = rollout_stack(arch)
    stack.set_trainable("policy", "value")
    ids, mask, p = rollout_rows()
    response = mask[:, p:].float()
    grads = []
    for layout in ("shared", "full"):
        with stack.use("policy"):
            out = rollout_passes(stack, ids, mask, p)[layout]
            ((out["logprobs"].logprobs * response).sum() + (out["values"] * response).sum()).backward()
        params = stack.role_parameters("policy") + stack.role_parameters("value")
        grads.append([q.grad.clone() for q in params])
        for q in params:
            q.grad = None
    assert all(g.abs().sum() > 0 for g in grads[0])
    for shared, full in zip(*grads):
        torch.testing.assert_close(shared, full, rtol=1e-4, atol=1e-5)


def test_rollout_passes_take_full_rows_when_nothing_is_shared():
    stack = rollout_stack("llama")
    ids, mask, p = rollout_rows()
    assert forward._shared_prompts(stack, ids, mask, p) is not None
    assert forward._shared_prompts(stack, ids[[0, 2, 3]], mask[[0, 2, 3]], p) is None  # distinct prompts
    assert forward._shared_prompts(stack, ids[:, p - 1 :], mask[:, p - 1 :], 1) is None  # one-token prompts
    stack.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with stack.training():
        assert forward._shared_prompts(stack, ids, mask, p) is None  # no KV cache comes back to share


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2", "qwen2"])
def test_eval_kl_of_rollout_rows_shares_prompts_and_equals_full_rows(arch, monkeypatch):
    from lora_rlhf.eval.kl import response_kl, sequence_kl

    stack = rollout_stack(arch)
    ids, mask, p = rollout_rows()
    response_mask = mask.clone()
    response_mask[:, :p] = 0
    encoded, prefix = [], forward.prefix_hidden_states
    monkeypatch.setattr(
        forward, "prefix_hidden_states", lambda stack, *args: encoded.append(args[0].shape[0]) or prefix(stack, *args)
    )
    shared = response_kl(stack, "policy", "reward", ids, mask, p)
    full = sequence_kl(stack, "policy", "reward", ids, mask, response_mask)
    assert full[:-1].min() > 0 and shared[-1] == 0  # the empty response has nothing to diverge on
    torch.testing.assert_close(shared, full, rtol=1e-4, atol=1e-5)
    assert encoded == ([3, 3] if stack.chunked_logits else [])  # models whose logits need their own forward: full rows
    assert response_kl(stack, "policy", "reward", ids[:, :p], mask[:, :p], p).tolist() == [0.0] * 6
