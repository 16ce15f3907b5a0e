"""Evaluation: win rates by hand, exact KL against a direct computation, and the files eval writes."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoTokenizer

from lora_rlhf import BaseModelConfig, LoraSettings, RoleStack
from lora_rlhf.data.chat import render_prompt
from lora_rlhf.data.sources import DatasetSpec
from lora_rlhf.eval import EvalConfig, evaluate, pairwise_win_rates, win_rate
from lora_rlhf.eval.kl import sequence_kl
from lora_rlhf.eval.result import read_eval_result
from lora_rlhf.eval.rm_accuracy import load_eval_rankings
from lora_rlhf.eval.samples import read_eval_samples


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
        for p in stack.role_parameters("policy"):
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
                logits = stack.model(
                    input_ids=enc.input_ids, attention_mask=enc.attention_mask, position_ids=position_ids
                ).logits
            logp[role] = logits.float().log_softmax(-1)
    kl = (logp["policy"].exp() * (logp["policy"] - logp["sft"])).sum(-1)[:, -3:-1].sum(-1)
    torch.testing.assert_close(got, kl)
    assert (got > 0).all()


def test_evaluate_writes_eval_json_report_and_plots(tiny_llama, tmp_path):
    stack = _stack(tiny_llama)
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "rm.jsonl").write_text(json.dumps({"step": 5, "loss": 0.5, "accuracy": 0.8, "split": "eval"}) + "\n")
    (metrics / "ppo.jsonl").write_text(
        "".join(json.dumps({"step": s, "reward": s * 0.1, "kl": s * 0.01, "gold": 0.1}) + "\n" for s in range(1, 4))
    )
    prompts = ["sort the numbers 3 1 2", "hello world", "reverse the words"]
    lengths = lambda ps, rs: [min(len(r), 10) / 10 for r in rs]  # noqa: E731 - a stand-in gold judge
    results = evaluate(
        stack, prompts, EvalConfig(max_new_tokens=6, batch_size=2, examples=2), tmp_path, gold_fn=lengths
    )
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved == results.to_json() and read_eval_result(tmp_path / "eval.json") == results
    assert set(saved["gold"]) == {"base", "sft", "ppo"} and set(saved["reward"]) == {"base", "sft", "ppo"}
    assert saved["rm_accuracy"] == 0.8 and saved["rm_accuracy_source"] == "metrics" and "rm_accuracy_ci" not in saved
    assert saved["kl"] >= 0
    assert set(saved["win_rate"]) == {"sft_vs_base", "ppo_vs_base", "ppo_vs_sft"}
    # sft is a fresh adapter (B = 0): it answers exactly like the base, so every comparison is a tie
    assert saved["win_rate"]["sft_vs_base"] == 0.5 and saved["gold"]["sft"] == saved["gold"]["base"]
    assert saved["gold_ci"]["sft_minus_base"] == [0.0, 0.0] and saved["win_rate_ci"]["sft_vs_base"] == [0.5, 0.5]
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
    assert got.reward == expected.reward and got.kl == pytest.approx(expected.kl, abs=1e-6)
    assert stack.model.training


def _finite(value) -> bool:
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return isinstance(value, (int, float)) and math.isfinite(value)


def _samples(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "eval_samples.jsonl").read_text().splitlines()]


def test_evaluate_writes_intervals_rm_accuracy_best_of_n_and_lm_loss(tiny_llama, tmp_path):
    stack = _stack(tiny_llama)
    rankings = tmp_path / "rankings.jsonl"
    rankings.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"prompt": "sort the numbers 3 1 2", "responses": ["1 2 3", "3 2 1", "2 1"], "ranks": [0, 2, 1]},
                {"prompt": "hello world", "chosen": "hello there", "rejected": "bad"},
            ]
        )
    )
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("the quick brown fox", "hello world please")))
    config = EvalConfig(
        max_new_tokens=5,
        batch_size=2,
        best_of_n=2,
        best_of_n_prompts=2,
        bootstrap_samples=200,
        rankings=DatasetSpec(str(rankings)),
        lm_text=DatasetSpec(str(text)),
    )
    lengths = lambda ps, rs: [min(len(r), 10) / 10 for r in rs]  # noqa: E731 - a stand-in gold judge
    results = evaluate(
        stack, ["sort the numbers 3 1 2", "hello world", "reverse the words"], config, tmp_path, gold_fn=lengths
    )
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved == results.to_json() and read_eval_result(tmp_path / "eval.json") == results
    pairs = ["sft_minus_base", "ppo_minus_base", "ppo_minus_sft"]
    assert list(saved["gold_ci"]) == pairs and list(saved["win_rate_ci"]) == [
        p.replace("_minus_", "_vs_") for p in pairs
    ]
    assert set(saved["gold_mean_ci"]) == set(saved["reward_mean_ci"]) == {"base", "sft", "ppo"}
    assert saved["rm_accuracy_source"] == "rankings" and saved["rm_accuracy_pairs"] == 4
    assert set(saved["best_of_n"]) >= {"n", "reward", "gold", "gold_random_sample"} and saved["best_of_n"]["n"] == 2
    # best-of-N on the first 2 of 3 prompts, its baseline sft's greedy gold on those same 2
    assert saved["best_of_n"]["prompts"] == 2
    assert saved["best_of_n"]["gold_sft"] == pytest.approx(
        sum(lengths(None, [r["sft"] for r in _samples(tmp_path)[:2]])) / 2
    )
    # eval_samples.jsonl keeps every model's gold per prompt (and the picks' on best-of-N's 2 prompts): the
    # figures of eval.json follow from it
    samples = read_eval_samples(tmp_path / "eval_samples.jsonl")
    assert samples.gold["sft"] == lengths(None, [r["sft"] for r in _samples(tmp_path)])
    assert {name: sum(g) / 3 for name, g in samples.gold.items()} == pytest.approx(results.gold)
    assert len(samples.best_of_n_gold) == 2 and sum(samples.best_of_n_gold) / 2 == pytest.approx(
        saved["best_of_n"]["gold"]
    )
    assert set(saved["lm_loss"]) == {"base", "sft", "ppo"} and saved["lm_loss"]["sft"] == saved["lm_loss"]["base"]
    for key in (
        "gold",
        "gold_mean_ci",
        "gold_ci",
        "win_rate",
        "win_rate_ci",
        "reward",
        "reward_mean_ci",
        "rm_accuracy",
        "rm_accuracy_ci",
        "rm_accuracy_pairs",
        "rm_accuracy_gold",
        "rm_accuracy_gold_ci",
        "rm_accuracy_gold_pairs",
        "best_of_n",
        "best_of_n_ci",
        "lm_loss",
        "kl",
    ):
        assert _finite(saved[key]), (key, saved[key])
    for interval in [
        *saved["gold_ci"].values(),
        *saved["win_rate_ci"].values(),
        saved["rm_accuracy_ci"],
        saved["best_of_n_ci"]["bon_minus_sft"],
    ]:
        assert len(interval) == 2 and interval[0] <= interval[1]
    report = (tmp_path / "report.md").read_text()
    for phrase in ("## Is the difference real?", "ppo − sft", "best-of-2", "LM loss", "over 4 pairs"):
        assert phrase in report, phrase


def test_evaluate_without_gold_gives_reward_judged_win_rates_intervals(tiny_llama, tmp_path):
    stack = _stack(tiny_llama)
    results = evaluate(
        stack, ["hello", "sort the numbers 3 1 2"], EvalConfig(max_new_tokens=3, batch_size=2, best_of_n=0), tmp_path
    )
    assert results.win_rate_judge == "reward_model" and results.gold is None and results.best_of_n is None
    assert set(results.win_rate_ci) == {"sft_vs_base", "ppo_vs_base", "ppo_vs_sft"}
    assert results.rm_accuracy.labels.accuracy is None and results.lm_loss is None
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert "gold" not in saved and "best_of_n" not in saved and "lm_loss" not in saved
    assert saved["rm_accuracy"] is None and saved["rm_accuracy_source"] == "metrics"


def test_per_prompt_means_average_consecutive_samples():
    from lora_rlhf.eval.run import per_prompt_means

    assert per_prompt_means([1.0, 0.0, 0.5, 0.5, 0.2, 0.4], 2) == pytest.approx([0.5, 0.5, 0.3])
    assert per_prompt_means([0.1, 0.7], 1) == [0.1, 0.7]
    with pytest.raises(ValueError, match="not 2 samples per prompt"):
        per_prompt_means([0.1, 0.2, 0.3], 2)


def test_several_samples_need_sampling():
    from lora_rlhf.errors import LoraRlhfError

    with pytest.raises(LoraRlhfError, match="samples_per_prompt: 2 needs temperature > 0"):
        EvalConfig(samples_per_prompt=2)


def test_sampled_eval_scores_each_prompt_by_its_samples_mean_and_reuses_them_for_best_of_n(
    tiny_llama, tmp_path, monkeypatch
):
    import lora_rlhf.eval.best_of_n as best_of_n_module

    stack = _stack(tiny_llama)
    # best-of-N must take sft's eval samples, not draw new ones.
    monkeypatch.setattr(best_of_n_module, "sample_candidates", lambda *a, **k: pytest.fail("sampled again"))
    config = EvalConfig(
        max_new_tokens=6, batch_size=2, temperature=1.0, samples_per_prompt=3, best_of_n=2, bootstrap_samples=200
    )
    lengths = lambda ps, rs: [min(len(r), 10) / 10 for r in rs]  # noqa: E731 - a stand-in gold judge
    prompts = ["sort the numbers 3 1 2", "hello world", "reverse the words"]
    results = evaluate(stack, prompts, config, tmp_path, gold_fn=lengths)
    rows = _samples(tmp_path)
    assert [len(r["ppo"]) for r in rows] == [3, 3, 3] and [r["prompt"] for r in rows] == prompts
    for model in ("base", "sft", "ppo"):
        expected = sum(sum(lengths(None, r[model])) / 3 for r in rows) / 3
        assert results.gold[model] == pytest.approx(expected)
    # wins are judged on each prompt's mean gold over its samples
    means = {m: [sum(lengths(None, r[m])) / 3 for r in rows] for m in ("sft", "ppo")}
    assert results.win_rate["ppo_vs_sft"] == pytest.approx(win_rate(means["ppo"], means["sft"]))
    assert results.samples_per_prompt == 3 and results.temperature == 1.0
    bon = results.best_of_n
    assert bon.candidates_from_eval_samples and bon.n == 2
    # the candidates are each prompt's first two sft samples, and each pick is one of them
    first_two = [lengths(None, r["sft"][:2]) for r in rows]
    assert sum(min(g) for g in first_two) / 3 - 1e-9 <= bon.gold <= sum(max(g) for g in first_two) / 3 + 1e-9
    # two different figures: the mean of the N candidates (one random sample), and sft's own eval score (here
    # the mean of all 3 samples per prompt) on the same prompts
    assert bon.gold_random_sample == pytest.approx(sum(sum(g) for g in first_two) / 6)
    assert bon.gold_sft == pytest.approx(results.gold["sft"])
    assert "3 samples per prompt at temperature 1" in (tmp_path / "report.md").read_text()


def test_rm_accuracy_leaves_out_pairs_identical_in_the_tokens_the_rm_sees(tiny_llama, tmp_path):
    """Issue 29: such a pair counted 0.5 in eval's RM accuracy whatever the RM learnt (equal inputs, equal scores)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    n_prompt = len(tokenizer(render_prompt(tokenizer, "p"), add_special_tokens=False).input_ids)
    long = "x " * 60
    rows = [
        {"prompt": "p", "responses": [long + "good", "short", long + "bad"], "ranks": [0, 1, 2]},
        {"prompt": "p", "chosen": long + "good", "rejected": long + "bad"},  # no pair left: skipped
        {"prompt": "p", "chosen": "yes", "rejected": "no"},
    ]
    path = tmp_path / "rankings.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = EvalConfig(rankings=DatasetSpec(str(path)), rankings_max_length=n_prompt + 8)
    kept, report = load_eval_rankings(config, tokenizer)
    (ranking, example), (plain, _) = kept
    assert ranking.responses == [long + "good", "short"] and ranking.ranks == [0, 1] and len(example.response_ids) == 2
    assert plain.responses == ["yes", "no"]
    assert report.dropped == 1 and report.no_signal_pairs == 1
