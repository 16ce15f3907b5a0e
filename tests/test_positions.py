"""Position ids of a padded batch (issue 26); a base's position limit and the length check against it (issue 29)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lora_rlhf.config.loader import build
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.models.positions import check_lengths, position_ids, position_limit
from lora_rlhf.ppo.config import PPOConfig
from lora_rlhf.ppo.trainer import _lengths


def model(**config) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(**config))


def test_position_ids_count_real_tokens_and_fill_pads_by_the_rule_asked():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    assert position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0]]
    as_generate = [[1, 1, 0, 1, 2], [0, 1, 2, 3, 4], [1, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert position_ids(mask, as_generate=True).tolist() == as_generate
    for dtype in (torch.bool, torch.int32, torch.float32):  # what a tokenizer or a cat of masks may hand over
        assert torch.equal(position_ids(mask.to(dtype)), position_ids(mask))
        assert torch.equal(position_ids(mask.to(dtype), as_generate=True), torch.tensor(as_generate))
    assert position_ids(mask).dtype == torch.long


def test_the_limit_is_read_from_either_architecture_key():
    assert position_limit(SimpleNamespace(max_position_embeddings=2048)) == ("max_position_embeddings", 2048)
    assert position_limit(SimpleNamespace(n_positions=1024)) == ("n_positions", 1024)  # GPT-2
    assert position_limit(SimpleNamespace()) is None
    assert position_limit(SimpleNamespace(max_position_embeddings=int(1e30))) is None  # a placeholder
    assert position_limit(None) is None


def test_a_length_at_the_limit_passes_and_one_past_it_names_key_value_and_limit():
    check_lengths(model(max_position_embeddings=512), {"sft.max_length": 512})
    check_lengths(model(), {"sft.max_length": 10**9})  # no limit set: nothing to check against
    with pytest.raises(
        LoraRlhfError,
        match=r"^rm\.max_length: 513 tokens is more than this model's position limit "
        r"\(512, its config's max_position_embeddings\); set it to 512 or less$",
    ):
        check_lengths(model(max_position_embeddings=512), {"sft.max_length": 64, "rm.max_length": 513})


def test_ppo_checks_a_rollout_and_ptx_only_when_ptx_runs():
    plain = build(PPOConfig, {"max_prompt_length": 100})
    assert _lengths(plain) == {"ppo.max_prompt_length + ppo.sampling.max_new_tokens": 100 + 64}
    with_ptx = build(PPOConfig, {"ptx": {"coef": 1.0, "data": {"path": "demos.jsonl"}, "max_length": 300}})
    assert _lengths(with_ptx)["ppo.ptx.max_length"] == 300


def test_eval_checks_its_response_budgets_and_lengths_and_ifeval_only_when_enabled():
    from lora_rlhf.eval.config import EvalConfig

    plain = build(EvalConfig, {"max_new_tokens": 600})
    assert plain.lengths() == {"eval.max_new_tokens": 600, "eval.rankings_max_length": 512, "eval.lm_max_length": 256}
    with pytest.raises(LoraRlhfError, match=r"^eval\.max_new_tokens: 600 tokens is more than"):
        check_lengths(model(n_positions=512), plain.lengths())
    ifeval = build(EvalConfig, {"ifeval": {"enabled": True, "max_new_tokens": 1280}})
    with pytest.raises(LoraRlhfError, match=r"^eval\.ifeval\.max_new_tokens: 1280 tokens .*\(1024, its config's n_pos"):
        check_lengths(model(n_positions=1024), ifeval.lengths())
