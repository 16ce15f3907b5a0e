"""Eval measurements on a tiny random model: RM accuracy with controlled RM scores, LM loss against a
direct computation from the model's logits, best-of-N picks from stubbed scores."""

from __future__ import annotations

import json

import pytest
import torch

from lora_rlhf import BaseModelConfig, LoraSettings, RoleStack
from lora_rlhf.data.sources import DatasetSpec
from lora_rlhf.eval import EvalConfig
from lora_rlhf.eval.best_of_n import best_of_n
from lora_rlhf.eval.lm_loss import lm_losses
from lora_rlhf.eval.rm_accuracy import rm_accuracy
from lora_rlhf.models import engine, forward

# Stub RM: a response's score is looked up by its last word.
_RM = {"great": 3.0, "good": 2.0, "bad": 1.0, "terrible": 0.0}


def _write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _stub_rewards(stack: RoleStack):
    def rewards(stack: RoleStack, role: str, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        texts = [stack.tokenizer.decode(row[m.bool()], skip_special_tokens=True) for row, m in zip(ids, mask)]
        return torch.tensor([_RM.get((t.split() or [""])[-1], -1.0) for t in texts])

    return rewards


def _stub_prefix_rewards(stack: RoleStack):
    """`prefix_rewards` through the stub above: each response re-joined to its prompt."""
    rewards = _stub_rewards(stack)

    def prefix_rewards(stack, role, prompt_ids, prompt_mask, response_ids, response_mask, prompt_index):
        rows = [
            torch.cat([prompt_ids[p][prompt_mask[p].bool()], ids[m.bool()]])
            for p, ids, m in zip(prompt_index.tolist(), response_ids, response_mask)
        ]
        return torch.cat([rewards(stack, role, row[None], torch.ones(1, len(row), dtype=torch.long)) for row in rows])

    return prefix_rewards


@pytest.fixture(scope="module")
def stack(tiny_llama) -> RoleStack:
    stack = RoleStack.load(BaseModelConfig(tiny_llama, quantization="none"))
    stack.add_role("sft", LoraSettings(r=4))
    stack.copy_role("sft", "policy")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in stack.role_parameters("policy"):
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    stack.model.eval()
    return stack


def test_rm_accuracy_against_labels_and_gold_on_hand_built_rankings(stack, tmp_path, monkeypatch):
    rows = [
        {"prompt": "sort the numbers", "responses": ["great", "bad", "good"], "ranks": [0, 2, 1]},  # 3 pairs, all right
        {"prompt": "hello world", "responses": ["terrible", "good"], "ranks": [0, 1]},  # 1 pair, wrong
        {
            "prompt": "reverse the words",
            "responses": ["good", "bad", "great"],
            "ranks": [0, 0, 1],
        },  # 2 untied pairs, both wrong
        {"prompt": "count letters", "responses": ["good", "good"], "ranks": [0, 1]},  # identical responses: bad row
        {"prompt": "no ranks here", "responses": ["good", "bad"]},  # bad row
        {"prompt": "all tied", "responses": ["good", "bad"], "ranks": [0, 0]},  # no pair: bad row
    ]
    config = EvalConfig(
        rankings=DatasetSpec(_write_jsonl(tmp_path / "rankings.jsonl", rows)), batch_size=3, bootstrap_samples=200
    )
    monkeypatch.setattr(forward, "rewards", _stub_rewards(stack))
    monkeypatch.setattr(forward, "prefix_rewards", _stub_prefix_rewards(stack))  # a ranking's K share their prompt
    gold_by_length = lambda prompts, responses: [float(len(r)) for r in responses]  # noqa: E731 - a stand-in gold judge
    got = rm_accuracy(stack, config, gold_by_length)
    assert got.source == "rankings" and got.rows == 3 and got.skipped_rows == 3
    assert got.labels.accuracy == pytest.approx(3 / 6) and got.labels.pairs == 6
    lo, hi = got.labels.ci
    assert 0 <= lo <= got.labels.accuracy <= hi <= 1
    # gold = length: great 5 > good 4 > bad 3, terrible 8; row 2 is the RM's only disagreement
    assert got.gold.accuracy == pytest.approx(6 / 7) and got.gold.pairs == 7
    assert got.gold.ci[0] <= 6 / 7 <= got.gold.ci[1]


def test_lm_loss_matches_a_direct_computation_from_the_logits(stack, tmp_path):
    texts = ["the quick brown fox jumps over the lazy dog", "hello world", "sort the numbers 3 1 2 please thanks"]
    path = _write_jsonl(
        tmp_path / "text.jsonl", [{"text": t} for t in texts] + [{"text": ""}]
    )  # the empty row is skipped
    got = lm_losses(stack, {"base": "base", "ppo": "policy"}, DatasetSpec(path), max_length=8, batch_size=2)
    for name, role in (("base", "base"), ("ppo", "policy")):
        total, count = 0.0, 0
        for text in texts:
            ids = torch.tensor(stack.tokenizer(text, add_special_tokens=True).input_ids[:8])
            with torch.no_grad(), stack.use(role):
                logits = stack.model(input_ids=ids[None]).logits[0, :-1].float()
            total += float(torch.nn.functional.cross_entropy(logits, ids[1:], reduction="sum"))
            count += len(ids) - 1
        assert got[name] == pytest.approx(total / count, rel=1e-4)
    assert got["ppo"] != pytest.approx(got["base"], rel=1e-4)


def test_best_of_n_keeps_the_highest_scored_sample_per_prompt(stack, monkeypatch):
    # RM scores of the 2 prompts x 3 samples, prompt-major
    monkeypatch.setattr(
        "lora_rlhf.eval.best_of_n.reward_scores",
        lambda stack, seqs, batch_size, prompt_lengths=None: [0.0, 5.0, 1.0, 2.0, 2.0, -1.0],
    )
    batches = []

    sample = engine.sample

    def counted(stack, role, ids, mask, **kw):
        batches.append((role, ids.shape[0]))
        return sample(stack, role, ids, mask, **kw)

    monkeypatch.setattr("lora_rlhf.models.engine.sample", counted)
    gold_calls = []

    def gold(prompts, responses):
        gold_calls.append(prompts)
        return [float(i) for i in range(len(responses))]  # sample k of prompt p: gold p*N + k

    config = EvalConfig(best_of_n=3, max_new_tokens=3, batch_size=2, bootstrap_samples=100)
    prompts = ["hello", "sort the numbers"]
    got, picked_gold = best_of_n(stack, prompts, prompts, config, gold_fn=gold, sft_gold=[0.0, 0.0])
    assert picked_gold == [1.0, 3.0]  # each prompt's pick, kept for eval_samples.jsonl
    assert got.n == 3 and got.reward == pytest.approx((5.0 + 2.0) / 2)
    assert got.gold == pytest.approx((1 + 3) / 2)  # picks: sample 1 of prompt 0, sample 0 of prompt 1
    assert got.gold_random_sample == pytest.approx(2.5)  # mean of 0..5
    assert gold_calls == [["hello"] * 3 + ["sort the numbers"] * 3]
    assert batches == [("sft", 6)]  # one batched decode for the eval batch of 2 prompts x 3 samples
    assert got.gold_minus_sft_ci[0] <= 2.0 <= got.gold_minus_sft_ci[1]
    # picks minus each prompt's mean sample: prompt 0: 1 - 1, prompt 1: 3 - 4
    assert got.gold_minus_sample_ci == (pytest.approx(-1.0, abs=1e-9), pytest.approx(0.0, abs=1e-9))
