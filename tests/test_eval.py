"""Evaluation: win rates by hand, exact KL against a direct computation, and the files eval writes."""

from __future__ import annotations

import json

import pytest
import torch

from lora_rlhf import BaseModelConfig, LoraSettings, RoleStack
from lora_rlhf.eval import EvalConfig, evaluate, pairwise_win_rates, win_rate
from lora_rlhf.eval.kl import sequence_kl


def test_win_rate_counts_ties_as_half():
    assert win_rate([1, 2, 3, 4], [0, 2, 5, 1]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    rates = pairwise_win_rates({"base": [0, 0], "sft": [1, 0], "ppo": [1, 1]})
    assert rates == {"sft_vs_base": 0.75, "ppo_vs_base": 1.0, "ppo_vs_sft": 0.75}
    with pytest.raises(ValueError):
        win_rate([], [])


def _stack(folder: str) -> RoleStack:
    stack = RoleStack.load(BaseModelConfig(folder, quantization="none"))
    stack.add_role("sft", LoraSettings(r=4))
    stack.add_role("reward", LoraSettings(r=4))
    stack.copy_role("sft", "policy")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in stack.parameters("policy"):
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return stack


def test_sequence_kl_matches_direct_computation(tiny_llama):
    stack = _stack(tiny_llama)
    enc = stack.tokenizer(["sort the numbers 3 1 2", "hello"], return_tensors="pt", padding=True)
    response_mask = enc.attention_mask.clone()
    response_mask[:, :-2] = 0  # the last two tokens are "the response"
    got = sequence_kl(stack, "policy", "reference", enc.input_ids, enc.attention_mask, response_mask, chunk_size=1)
    position_ids = (enc.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logp = {}
        for role in ("policy", "sft"):
            with stack.use(role):
                logits = stack.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, position_ids=position_ids).logits
            logp[role] = logits.float().log_softmax(-1)
    kl = (logp["policy"].exp() * (logp["policy"] - logp["sft"])).sum(-1)[:, -3:-1].sum(-1)
    torch.testing.assert_close(got, kl)
    assert (got > 0).all()


def test_evaluate_writes_eval_json_report_and_plots(tiny_llama, tmp_path):
    stack = _stack(tiny_llama)
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "rm.jsonl").write_text(json.dumps({"step": 5, "loss": 0.5, "accuracy": 0.8, "split": "eval"}) + "\n")
    (metrics / "ppo.jsonl").write_text("".join(json.dumps({"step": s, "reward": s * 0.1, "kl": s * 0.01, "gold": 0.1}) + "\n" for s in range(1, 4)))
    prompts = ["sort the numbers 3 1 2", "hello world", "reverse the words"]
    lengths = lambda ps, rs: [min(len(r), 10) / 10 for r in rs]  # noqa: E731 - a stand-in gold judge
    results = evaluate(stack, prompts, EvalConfig(max_new_tokens=6, batch_size=2, examples=2), tmp_path, gold_fn=lengths)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert set(saved["gold"]) == {"base", "sft", "ppo"} and set(saved["reward"]) == {"base", "sft", "ppo"}
    assert saved["rm_accuracy"] == 0.8 and saved["kl"] >= 0
    assert set(saved["win_rate"]) == {"sft_vs_base", "ppo_vs_base", "ppo_vs_sft"}
    # sft is a fresh adapter (B = 0): it answers exactly like the base, so every comparison is a tie
    assert saved["win_rate"]["sft_vs_base"] == 0.5 and saved["gold"]["sft"] == saved["gold"]["base"]
    report = (tmp_path / "report.md").read_text()
    for png in ("gold.png", "win_rate.png", "ppo.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 1000
        assert f"(plots/{png})" in report
    assert "| ppo |" in report and len((tmp_path / "eval_samples.jsonl").read_text().splitlines()) == 3


def test_evaluation_scores_without_dropout_whatever_mode_the_model_was_left_in(tiny_llama, tmp_path):
    stack = _stack(tiny_llama)
    prompts = ["sort the numbers 3 1 2", "hello"]
    config = EvalConfig(max_new_tokens=4, batch_size=2)
    stack.model.eval()
    expected = evaluate(stack, prompts, config, tmp_path / "a")
    stack.model.train()  # as a training stage leaves it: LoRA dropout (p = 0.05 by default) would be active
    got = evaluate(stack, prompts, config, tmp_path / "b")
    assert got["reward"] == expected["reward"] and got["kl"] == pytest.approx(expected["kl"], abs=1e-6)
    assert stack.model.training
