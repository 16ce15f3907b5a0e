"""The reward-model stage on a tiny random model: learning a preference, frozen roles, bias, resume."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from lora_rlhf.data.sources import DatasetSpec
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.metrics import read_metrics
from lora_rlhf.models import forward
from lora_rlhf.models.base import BaseModelConfig
from lora_rlhf.models.heads import ScalarHead
from lora_rlhf.models.lora import LoraSettings
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.rm.bias import mean_reward
from lora_rlhf.rm.config import RMConfig
from lora_rlhf.rm.trainer import train_reward_model
from lora_rlhf.train.config import OptimConfig

FILLER = "the quick brown fox jumps over lazy dog".split()
MARKER = "great"


def marker_rankings(n: int, seed: int = 0) -> list[dict]:
    """Rankings with K = 2..4 whose order is fixed by the marker: the more times it occurs, the better."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.choice([2, 3, 4])
        ranks = rng.sample(range(k), k)
        responses = []
        for rank in ranks:
            words = [rng.choice(FILLER) for _ in range(3)] + [MARKER] * (k - 1 - rank)
            rng.shuffle(words)
            responses.append(" ".join(words))
        rows.append(
            {"prompt": rng.choice(["say something", "answer with yes or no"]), "responses": responses, "ranks": ranks}
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> DatasetSpec:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return DatasetSpec(str(path))


def snapshot(stack: RoleStack, role: str | None = None) -> dict[str, torch.Tensor]:
    if role is None:
        return {n: p.detach().clone() for n, p in stack.model.named_parameters() if "lora_" not in n}
    return {str(i): p.detach().clone() for i, p in enumerate(stack.role_parameters(role))}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def load_stack(folder: str, *, sft: bool = True) -> RoleStack:
    stack = RoleStack.load(BaseModelConfig(name_or_path=folder))
    if sft:
        stack.add_role("sft", LoraSettings(r=4, alpha=8))
        torch.manual_seed(1)
        for p in stack.role_parameters("sft"):
            torch.nn.init.normal_(p, std=0.02)  # a trained-looking sft adapter: copying it must copy these
    return stack


@pytest.fixture()
def data(tmp_path) -> dict[str, DatasetSpec]:
    demos = [
        {"prompt": "say something", "completion": "the lazy dog"},
        {"prompt": "hello", "completion": "great great"},
    ]
    return {
        "rankings": write_jsonl(tmp_path / "rankings.jsonl", marker_rankings(96)),
        "demos": write_jsonl(tmp_path / "demos.jsonl", demos),
    }


def rm_config(data, **train) -> RMConfig:
    optim = dict(
        learning_rate=3e-3,
        batch_size=8,
        epochs=3,
        logging_steps=3,
        eval_steps=9,
        save_steps=9,
        warmup_ratio=0.0,
        scheduler="constant",
    )
    optim.update(train)
    return RMConfig(
        data=data["rankings"],
        demonstrations=data["demos"],
        eval_fraction=0.25,
        max_length=48,
        init="fresh",
        lora=LoraSettings(r=8, alpha=16, dropout=0.0),
        train=OptimConfig(**optim),
    )


def test_rm_learns_a_marker_preference_and_leaves_other_roles_untouched(tiny_llama, data, tmp_path):
    stack = load_stack(tiny_llama)
    base, sft = snapshot(stack), snapshot(stack, "sft")
    out = tmp_path / "run"
    summary = train_reward_model(stack, rm_config(data), out)
    assert summary["accuracy"] >= 0.9, summary  # held-out pairwise accuracy (24 prompts, 50+ pairs)
    assert summary["prompts"] == 72 and summary["dropped"] == 0
    assert same(snapshot(stack), base) and same(snapshot(stack, "sft"), sft)
    rows = read_metrics(out / "metrics" / "rm.jsonl")
    eval_rows = [r for r in rows if r.get("split") == "eval"]
    assert eval_rows and {"loss", "accuracy", "margin"} <= eval_rows[-1].keys()
    assert eval_rows[-1]["accuracy"] == summary["accuracy"]
    assert all({"loss", "accuracy", "margin"} <= r.keys() for r in rows)
    saved = out / "adapters" / "reward"
    assert (saved / "head.safetensors").is_file() and (saved / "adapter_config.json").is_file()
    fresh = load_stack(tiny_llama, sft=False)
    fresh.load_role("reward", saved)
    assert same(snapshot(fresh, "reward"), snapshot(stack, "reward"))


def test_bias_centres_the_demonstrations(tiny_llama, data, tmp_path):
    from lora_rlhf.data.demonstrations import load_sft_examples

    stack = load_stack(tiny_llama)
    summary = train_reward_model(stack, rm_config(data, max_steps=1), tmp_path / "run")
    examples, _ = load_sft_examples(data["demos"], stack.tokenizer, 48)
    assert summary["bias_shift"] != 0.0
    assert abs(mean_reward(stack, [e.input_ids for e in examples], batch_size=2)) < 1e-5
    saved = load_stack(tiny_llama, sft=False)  # the bias is stored with the head in adapters/reward/
    saved.load_role("reward", tmp_path / "run" / "adapters" / "reward")
    assert abs(mean_reward(saved, [e.input_ids for e in examples], batch_size=2)) < 1e-5


def test_init_sft_copies_the_sft_adapter_and_requires_it(tiny_llama, data, tmp_path):
    stack = load_stack(tiny_llama)
    sft = snapshot(stack, "sft")
    config = rm_config(data, max_steps=1, learning_rate=1e-12)
    config.init = "sft"
    train_reward_model(stack, config, tmp_path / "run")
    reward = snapshot(stack, "reward")
    adapter = {k: v for k, v in reward.items() if int(k) < len(sft)}
    assert all(torch.allclose(adapter[k], sft[k], atol=1e-9) for k in sft)  # lr ~ 0: still the copy
    with pytest.raises(LoraRlhfError, match="rm.init: 'sft' needs the sft role"):
        train_reward_model(load_stack(tiny_llama, sft=False), config, tmp_path / "other")


def test_rm_resume_matches_an_uninterrupted_run(tiny_llama, data, tmp_path):
    config = rm_config(data, epochs=1, logging_steps=1, eval_steps=3, save_steps=3)  # 9 steps; cut after 6
    whole = load_stack(tiny_llama)
    train_reward_model(whole, config, tmp_path / "whole")
    cut = tmp_path / "cut" / "checkpoints" / "rm"
    cut.mkdir(parents=True)
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "rm" / "step-00000006", cut / "step-00000006")
    resumed = load_stack(tiny_llama)
    train_reward_model(resumed, config, tmp_path / "cut", resume=True)
    assert same(snapshot(resumed, "reward"), snapshot(whole, "reward"))  # adapter AND head
    tail = [r for r in read_metrics(tmp_path / "whole" / "metrics" / "rm.jsonl") if r["step"] > 6]
    assert read_metrics(tmp_path / "cut" / "metrics" / "rm.jsonl") == tail


def test_rm_config_errors_name_the_key():
    from lora_rlhf.config.loader import build

    with pytest.raises(LoraRlhfError, match=r"rm\.ties: 'ignore' is not one of error, skip_pairs"):
        build(RMConfig, {"ties": "ignore"}, "rm.")
    with pytest.raises(LoraRlhfError, match=r"rm\.init: 'copy' is not one of sft, fresh"):
        build(RMConfig, {"init": "copy"}, "rm.")
    with pytest.raises(LoraRlhfError, match=r"^rm\.bias_examples: 0"):
        build(RMConfig, {"bias_examples": 0}, "rm.")


def test_rm_loss_scores_each_response_once_in_one_forward(tiny_llama, monkeypatch):
    from lora_rlhf.data.rankings import RankingExample
    from lora_rlhf.rm.batching import collate_rankings
    from lora_rlhf.rm.loss import ranking_loss
    from lora_rlhf.rm.trainer import rm_loss

    stack = load_stack(tiny_llama, sft=False)
    stack.add_role("reward", LoraSettings(r=4, dropout=0.0))
    torch.manual_seed(0)
    for p in stack.role_parameters("reward"):
        torch.nn.init.normal_(p, std=0.05)
    eos = stack.tokenizer.eos_token_id
    examples = [
        RankingExample([5, 6, 7], [[8, eos], [9, 10, eos]], [1, 0]),
        RankingExample([5], [[11, eos], [12, 13, 14, eos], [15, eos], [16, 17, eos]], [2, 0, 3, 1]),
        RankingExample([6, 7], [[18, 19, eos], [20, eos], [21, eos]], [0, 2, 1]),
    ]
    calls, rewards = [], forward.rewards

    def counted(stack, role, input_ids, attention_mask):
        calls.append(tuple(input_ids.shape))
        return rewards(stack, role, input_ids, attention_mask)

    monkeypatch.setattr(forward, "rewards", counted)
    with torch.no_grad():
        out = rm_loss(stack, collate_rankings(examples, stack.tokenizer.pad_token_id))
        assert [n for n, _ in calls] == [9]  # the 2 + 4 + 3 responses, scored in ONE call
        # Each response scored alone (no padding), then the loss of eq. 1 on the (B, K_max) grid.
        alone = [
            [
                rewards(
                    stack,
                    "reward",
                    torch.tensor([e.prompt_ids + r]),
                    torch.ones(1, len(e.prompt_ids + r), dtype=torch.long),
                ).item()
                for r in e.response_ids
            ]
            for e in examples
        ]
    grid = torch.tensor([row + [0.0] * (4 - len(row)) for row in alone])
    ranks = torch.tensor([e.ranks + [0] * (4 - len(e.ranks)) for e in examples])
    valid = torch.tensor([[k < len(e.ranks) for k in range(4)] for e in examples])
    torch.testing.assert_close(out.loss, ranking_loss(grid, ranks, valid).loss, rtol=1e-5, atol=1e-5)


def test_rm_skipped_rows_are_counted_and_ties_skip_their_pairs(tiny_llama, data, tmp_path):
    rows = marker_rankings(12) + [
        {"prompt": "say something", "responses": ["great dog", ""], "ranks": [0, 1]},  # empty response
        {"prompt": "say something", "responses": ["a", "b", "c"], "ranks": [0, 1, 3]},  # not a permutation
        {"prompt": "say something", "responses": ["great great", "great", "dog"], "ranks": [0, 1, 1]},  # a tie
    ]
    config = rm_config({**data, "rankings": write_jsonl(tmp_path / "bad.jsonl", rows)}, max_steps=1)
    with pytest.raises(LoraRlhfError, match=r"bad\.jsonl, line 13: field 'responses\[1\]' is empty"):
        train_reward_model(load_stack(tiny_llama), config, tmp_path / "strict")
    config.on_bad_row, config.ties, config.eval_fraction = "skip", "skip_pairs", 0.0
    summary = train_reward_model(load_stack(tiny_llama), config, tmp_path / "run")
    assert summary["dropped"] == 2 and summary["prompts"] == 13  # the tied row is kept; its tied pair gives no loss


@pytest.mark.parametrize("init", ["fresh", "sft"])
def test_the_same_seed_gives_the_same_reward_model_whatever_ran_before(tiny_llama, data, tmp_path, init):
    config = rm_config(data, max_steps=1)
    config.init = init
    first = load_stack(tiny_llama)
    train_reward_model(first, config, tmp_path / "first")
    second = load_stack(tiny_llama)  # seeds the RNG for its sft adapter: move it on after that
    torch.rand(7)  # as other work in the same process would
    train_reward_model(second, config, tmp_path / "second")
    assert same(snapshot(first, "reward"), snapshot(second, "reward"))  # the head's random init included


def _few_step_config(data, **overrides) -> RMConfig:
    """The demo's regime: a LoRA learning rate, one epoch of 9 optimizer steps, a cosine schedule."""
    optim = OptimConfig(
        learning_rate=5e-4,
        batch_size=8,
        epochs=1,
        logging_steps=3,
        eval_steps=9,
        save_steps=9,
        warmup_ratio=0.05,
        scheduler="cosine",
    )
    return RMConfig(
        data=data["rankings"],
        demonstrations=data["demos"],
        eval_fraction=0.25,
        max_length=48,
        init="sft",
        train=optim,
        **overrides,
    )


def test_rm_learns_a_marker_preference_in_a_few_steps_at_lora_rates(tiny_llama, data, tmp_path, monkeypatch):
    """Issue 10: at LoRA rates and a handful of steps the RM must still learn. The control is the head as it
    was before the fix (random init of std 1/sqrt(H), trained at the adapter's rate): it fails the same bar."""
    summary = train_reward_model(load_stack(tiny_llama), _few_step_config(data), tmp_path / "run")
    assert summary["accuracy"] >= 0.9, summary

    def random_init(self, hidden_size, kind):
        original_init(self, hidden_size, kind)
        torch.nn.init.normal_(self.linear.weight, std=1.0 / (hidden_size + 1) ** 0.5)

    original_init = ScalarHead.__init__
    monkeypatch.setattr(ScalarHead, "__init__", random_init)
    stuck = train_reward_model(
        load_stack(tiny_llama), _few_step_config(data, head_learning_rate=5e-4), tmp_path / "stuck"
    )
    assert stuck["accuracy"] < 0.9, stuck


def test_rm_summary_counts_the_pairs_left_out_as_identical_once_truncated(tiny_llama, data, tmp_path):
    """Issue 29: a pair cut identical by max_length trained to loss log 2; now it is left out and counted."""
    shared = " ".join(FILLER * 6)
    rows = marker_rankings(12) + [
        {"prompt": "say something", "responses": [shared + " great", "dog", shared + " bad"], "ranks": [0, 1, 2]},
        {"prompt": "say something", "responses": ["dog dog", "dog dog"], "ranks": [0, 1]},  # identical text
    ]
    config = rm_config({**data, "rankings": write_jsonl(tmp_path / "long.jsonl", rows)}, max_steps=1)
    config.max_length, config.eval_fraction = 32, 0.0
    with pytest.raises(LoraRlhfError, match=r"long\.jsonl, line 13: responses\[0\] and responses\[2\] are identical"):
        train_reward_model(load_stack(tiny_llama), config, tmp_path / "strict")
    config.on_bad_row, config.ties = "skip", "skip_pairs"
    summary = train_reward_model(load_stack(tiny_llama), config, tmp_path / "run")
    assert summary["no_signal_pairs"] == 1 and summary["dropped"] == 1 and summary["prompts"] == 13
