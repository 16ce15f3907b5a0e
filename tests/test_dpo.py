"""The DPO stage on a tiny random model: a marker-word preference learnt, the reference and base untouched,
resume, the reference computed once and cached, config errors."""

from __future__ import annotations

import shutil

import pytest
import torch
from test_rm import load_stack, marker_rankings, same, snapshot, write_jsonl

from lora_rlhf.config.loader import build
from lora_rlhf.dpo.batching import DPOExample, collate_dpo, sequence_logprobs
from lora_rlhf.dpo.config import DPOConfig
from lora_rlhf.dpo.reference import CACHE_NAME
from lora_rlhf.dpo.trainer import dpo_loss, train_dpo
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.metrics import read_metrics
from lora_rlhf.models import forward
from lora_rlhf.rm.config import RMConfig
from lora_rlhf.train.config import OptimConfig

TRL_FIGURES = {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"}


@pytest.fixture()
def rankings(tmp_path):
    return write_jsonl(tmp_path / "rankings.jsonl", marker_rankings(96))


def dpo_config(rankings, **train) -> DPOConfig:
    optim = dict(
        learning_rate=3e-3,
        batch_size=8,
        epochs=2,
        logging_steps=3,
        eval_steps=9,
        save_steps=9,
        warmup_ratio=0.0,
        scheduler="constant",
    )
    optim.update(train)
    return DPOConfig(data=rankings, eval_fraction=0.25, max_length=48, beta=0.5, train=OptimConfig(**optim))


def test_dpo_learns_a_marker_preference_and_leaves_sft_and_the_base_untouched(tiny_llama, rankings, tmp_path):
    stack = load_stack(tiny_llama)
    base, sft = snapshot(stack), snapshot(stack, "sft")
    out = tmp_path / "run"
    summary = train_dpo(stack, dpo_config(rankings), out)
    assert summary["accuracy"] >= 0.9 and summary["margin"] > 0, summary  # held-out: 24 prompts, 50+ pairs
    assert summary["prompts"] == 72 and summary["dropped"] == 0
    assert same(snapshot(stack), base) and same(snapshot(stack, "sft"), sft)  # the reference never moved
    assert not same(snapshot(stack, "dpo"), sft)
    rows = read_metrics(out / "metrics" / "dpo.jsonl")
    train_rows = [r for r in rows if r.get("split") != "eval"]
    eval_rows = [r for r in rows if r.get("split") == "eval"]
    assert all(TRL_FIGURES <= r.keys() for r in rows) and train_rows and eval_rows
    assert eval_rows[-1]["rewards/accuracies"] == summary["accuracy"]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    saved = out / "adapters" / "dpo"
    assert (saved / "adapter_config.json").is_file() and not (saved / "head.safetensors").exists()
    fresh = load_stack(tiny_llama, sft=False)
    fresh.load_role("dpo", saved)
    assert same(snapshot(fresh, "dpo"), snapshot(stack, "dpo"))


def test_the_policy_starts_as_sft_so_the_first_loss_is_log_2(tiny_llama, rankings):
    stack = load_stack(tiny_llama)
    stack.copy_role("sft", "dpo")
    examples = [DPOExample(e) for e in _examples(stack, rankings)[:6] if len(e.ranks) == 2]
    batch = collate_dpo(examples, stack.tokenizer.pad_token_id)
    with torch.no_grad(), stack.evaluating():
        out = dpo_loss(stack, batch, DPOConfig(beta=0.1))
    assert out.stats["loss"] == pytest.approx(0.6931472, abs=1e-5)
    assert out.stats["rewards/margins"] == pytest.approx(0.0, abs=1e-5)


def test_sequence_logprobs_sum_each_responses_tokens(tiny_llama, rankings):
    stack = load_stack(tiny_llama)
    examples = _examples(stack, rankings)[:3]
    batch = collate_dpo([DPOExample(e) for e in examples], stack.tokenizer.pad_token_id)
    with torch.no_grad():
        got = sequence_logprobs(stack, "sft", batch)
        alone = []
        for e in examples:
            for response in e.response_ids:
                ids = torch.tensor([e.prompt_ids + response])
                tokens = forward.logprobs(stack, "sft", ids, torch.ones_like(ids), start=len(e.prompt_ids) - 1).logprobs
                alone.append(float(tokens.sum()))
    torch.testing.assert_close(got, torch.tensor(alone), rtol=1e-4, atol=1e-4)


def test_dpo_resume_matches_an_uninterrupted_run(tiny_llama, rankings, tmp_path):
    config = dpo_config(rankings, epochs=1, logging_steps=1, eval_steps=3, save_steps=3)  # 9 steps; cut after 6
    whole = load_stack(tiny_llama)
    train_dpo(whole, config, tmp_path / "whole")
    cut = tmp_path / "cut" / "checkpoints" / "dpo"
    cut.mkdir(parents=True)
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "dpo" / "step-00000006", cut / "step-00000006")
    resumed = load_stack(tiny_llama)
    train_dpo(resumed, config, tmp_path / "cut", resume=True)
    assert same(snapshot(resumed, "dpo"), snapshot(whole, "dpo"))
    tail = [r for r in read_metrics(tmp_path / "whole" / "metrics" / "dpo.jsonl") if r["step"] > 6]
    assert read_metrics(tmp_path / "cut" / "metrics" / "dpo.jsonl") == tail


def test_a_precomputed_reference_trains_as_the_one_computed_per_batch_and_is_reused(
    tiny_llama, rankings, tmp_path, caplog
):
    config = dpo_config(rankings, epochs=1, max_steps=3)
    config.train.batch_size = 16
    live = load_stack(tiny_llama)
    train_dpo(live, config, tmp_path / "live")
    config.precompute_reference = True
    cached = load_stack(tiny_llama)
    train_dpo(cached, config, tmp_path / "cached")
    cache = tmp_path / "cached" / "checkpoints" / "dpo" / CACHE_NAME
    assert cache.is_file()
    for a, b in zip(snapshot(live, "dpo").values(), snapshot(cached, "dpo").values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    shutil.rmtree(tmp_path / "cached" / "adapters")
    with caplog.at_level("INFO", logger="lora_rlhf.dpo.reference"):
        train_dpo(load_stack(tiny_llama), config, tmp_path / "cached")
    assert "come from" in caplog.text
    other = load_stack(tiny_llama)
    with torch.no_grad():
        other.role_parameters("sft")[0].add_(0.01)  # another sft adapter: the cache must not be used
    caplog.clear()
    with caplog.at_level("INFO", logger="lora_rlhf.dpo.reference"):
        train_dpo(other, config, tmp_path / "cached")
    assert "recomputing" in caplog.text


def test_dpo_needs_sft_and_the_unset_data_keys_are_the_rms(tiny_llama, rankings, tmp_path):
    with pytest.raises(LoraRlhfError, match="dpo needs the sft role"):
        train_dpo(load_stack(tiny_llama, sft=False), dpo_config(rankings), tmp_path / "run")
    rm = RMConfig(data=rankings, max_length=40, ties="skip_pairs", on_bad_row="skip", eval_fraction=0.2)
    resolved = DPOConfig().resolved(rm)
    assert (resolved.data, resolved.max_length, resolved.ties, resolved.on_bad_row) == (
        rankings,
        40,
        "skip_pairs",
        "skip",
    )
    assert resolved.eval_fraction == 0.2
    own = DPOConfig(max_length=64, ties="error").resolved(rm)
    assert (own.max_length, own.ties) == (64, "error")


def test_dpo_config_errors_name_the_key():
    with pytest.raises(LoraRlhfError, match=r"^dpo\.beta: 0"):
        build(DPOConfig, {"beta": 0}, "dpo.")
    with pytest.raises(LoraRlhfError, match=r"dpo\.loss_type: 'ipo' is not one of plackett_luce, sigmoid"):
        build(DPOConfig, {"loss_type": "ipo"}, "dpo.")
    with pytest.raises(LoraRlhfError, match=r"dpo\.ties: 'ignore' is not"):
        build(DPOConfig, {"ties": "ignore"}, "dpo.")
    with pytest.raises(LoraRlhfError, match=r"^dpo\.max_length: 1 "):
        build(DPOConfig, {"max_length": 1}, "dpo.")


def _examples(stack, rankings):
    from lora_rlhf.data.rankings import load_ranking_examples

    return load_ranking_examples(rankings, stack.tokenizer, 48)[0]


def test_a_diverging_dpo_stops_with_one_line_and_saves_no_adapter(tiny_llama, rankings, tmp_path):
    config = dpo_config(rankings, learning_rate=1e30, max_steps=4, max_grad_norm=0.0)
    with pytest.raises(LoraRlhfError, match=r"^dpo stopped at step \d+: .* not finite"):
        train_dpo(load_stack(tiny_llama), config, tmp_path / "run")
    assert not (tmp_path / "run" / "adapters" / "dpo").exists()


def test_ties_and_bad_rows_are_read_as_the_rm_stage_reads_them(tiny_llama, tmp_path):
    rows = marker_rankings(12) + [
        {"prompt": "say something", "responses": ["great great", "great", "dog"], "ranks": [0, 1, 1]},  # a tie
        {"prompt": "say something", "responses": ["a", "b", "c"], "ranks": [0, 1, 3]},  # not a permutation
    ]
    config = dpo_config(write_jsonl(tmp_path / "tied.jsonl", rows), max_steps=1)
    config.eval_fraction = 0.0
    with pytest.raises(LoraRlhfError, match=r"tied\.jsonl, line 13: field 'ranks' \[0, 1, 1\] has ties"):
        train_dpo(load_stack(tiny_llama), config, tmp_path / "strict")
    config.ties, config.on_bad_row = "skip_pairs", "skip"
    summary = train_dpo(load_stack(tiny_llama), config, tmp_path / "run")
    assert summary["prompts"] == 13 and summary["dropped"] == 1  # the tied row kept, its tied pair no comparison


def test_a_bad_rankings_row_names_the_dpo_keys_to_change(tiny_llama, tmp_path):
    """Issue 29: the DPO stage's one-line errors named rm.ties and rm.max_length, keys dpo.* overrides."""
    tied = {"prompt": "say something", "responses": ["a", "b", "c"], "ranks": [0, 0, 1]}
    cut = {"prompt": "say something", "chosen": "x " * 60 + "good", "rejected": "x " * 60 + "bad"}
    for row, expected in (
        (tied, r"line 13: field 'ranks' \[0, 0, 1\] has ties \(set dpo\.ties: skip_pairs"),
        (cut, r"line 13: the two responses are identical in the \d+ tokens .*max_length 48.*\(raise dpo\.max_length\)"),
    ):
        config = dpo_config(write_jsonl(tmp_path / "bad.jsonl", [*marker_rankings(12), row]), max_steps=1)
        config.eval_fraction, config.ties = 0.0, "error"
        with pytest.raises(LoraRlhfError, match=expected):
            train_dpo(load_stack(tiny_llama), config, tmp_path / "run")
