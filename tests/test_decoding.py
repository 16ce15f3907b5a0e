"""The decoding engine (models/engine.py: `engine.sample`, rows leaving the batch at their stop) returns what `generate`
returns, on every decoder family transformers ships, while running each row only until its stop."""

from __future__ import annotations

import pytest
import torch

from lora_rlhf.data.batching import pad_left
from lora_rlhf.models import engine, forward
from lora_rlhf.models.lora import LoraSettings
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.models.sampling import draw
from lora_rlhf.testing.reference import reference_generate, sampling_kwargs

from fake_decoder import FakeStack
from tiny_architectures import ARCHITECTURES, tiny_causal_lm

PROMPTS = [[5, 6, 7, 8, 9], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14, 15, 16, 17, 18], [19, 20], [19, 20], [21, 22, 23]]


def policy_stack(arch: str) -> RoleStack:
    stack = RoleStack(tiny_causal_lm(arch))
    stack.add_role("policy", LoraSettings(r=4, alpha=8, dropout=0.0))
    torch.manual_seed(1)
    for p in stack.role_parameters("policy"):
        torch.nn.init.normal_(p, std=0.1)
    return stack


def a_stop_token(stack: RoleStack, ids: torch.Tensor, mask: torch.Tensor) -> int:
    """A token that greedy decoding draws early in some rows and not in others: rows then stop at different steps."""
    out = reference_generate(
        stack, "policy", ids, mask, max_new_tokens=6, pad_token_id=0, eos_token_id=None, do_sample=False
    )
    return int(out[0, ids.shape[1] + 2])


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_greedy_sample_equals_generate_with_rows_stopping_at_different_steps(arch):
    stack = policy_stack(arch)
    ids, mask = pad_left(PROMPTS, 0)
    stop = a_stop_token(stack, ids, mask)
    expected = reference_generate(
        stack, "policy", ids, mask, max_new_tokens=10, pad_token_id=0, eos_token_id=[stop], **sampling_kwargs(0.0)
    )
    got = engine.sample(stack, "policy", ids, mask, max_new_tokens=10, temperature=0.0, stop_ids=[stop], pad_id=0)
    assert torch.equal(got.sequences, expected)
    assert (got.sequences[:, ids.shape[1] :] == stop).any()  # the case is real: some row stopped


@pytest.mark.parametrize("options", [dict(temperature=1.0), dict(temperature=0.7, top_k=3), dict(top_p=0.8)])
def test_draw_samples_the_distribution_generate_samples(options):
    # Frequencies of 40k draws against the probabilities of transformers' own warpers (generate's sampler).
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.tensor([[2.0, 1.5, 1.0, 0.2, -0.5, -1.0, -3.0, -8.0]])
    t = options.get("temperature", 1.0)
    warpers = LogitsProcessorList([TemperatureLogitsWarper(t)])
    if options.get("top_k"):
        warpers.append(TopKLogitsWarper(options["top_k"]))
    if options.get("top_p"):
        warpers.append(TopPLogitsWarper(options["top_p"]))
    expected = warpers(None, logits.clone()).softmax(-1)[0]
    torch.manual_seed(0)
    tokens = draw(logits.expand(40_000, -1), t, top_k=options.get("top_k", 0), top_p=options.get("top_p", 1.0))
    frequencies = torch.bincount(tokens, minlength=8).float() / len(tokens)
    torch.testing.assert_close(frequencies, expected, atol=0.01, rtol=0)
    assert (frequencies[expected == 0] == 0).all()


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2", "qwen2"])
def test_sample_draws_each_row_from_its_own_next_token_distribution(arch):
    # 4000 copies of two prompts, one step: the first tokens' frequencies are the model's softmax per prompt.
    stack = policy_stack(arch)
    ids, mask = pad_left([PROMPTS[0]] * 2000 + [PROMPTS[2]] * 2000, 0)
    torch.manual_seed(0)
    first = engine.sample(
        stack, "policy", ids, mask, max_new_tokens=1, temperature=1.0, stop_ids=[], pad_id=0
    ).sequences[:, -1]
    with stack.use("policy"):
        logits = stack.model(input_ids=ids[[0, -1]], attention_mask=mask[[0, -1]]).logits[:, -1]
    for half, probs in zip((first[:2000], first[2000:]), logits.float().softmax(-1)):
        frequencies = torch.bincount(half, minlength=probs.shape[0]).float() / len(half)
        torch.testing.assert_close(frequencies, probs, atol=0.04, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_recorded_logprobs_and_entropy_equal_a_recomputation(arch, temperature):
    stack = policy_stack(arch)
    ids, mask = pad_left(PROMPTS, 0)
    stop = a_stop_token(stack, ids, mask)
    torch.manual_seed(0)
    got = engine.sample(
        stack,
        "policy",
        ids,
        mask,
        max_new_tokens=10,
        temperature=temperature,
        stop_ids=[stop],
        pad_id=0,
        with_logprobs=True,
    )
    p = ids.shape[1]
    responses = got.sequences[:, p:]
    is_stop = (responses == stop).long()
    response_mask = ((is_stop.cumsum(1) - is_stop) == 0).long()
    full_mask = torch.cat([mask, response_mask], dim=1)
    recomputed = forward.response_logprobs(
        stack, "policy", got.sequences, full_mask, p, temperature=temperature, with_entropy=True
    )
    m = response_mask.bool()
    torch.testing.assert_close(got.logprobs[m], recomputed.logprobs[m], atol=1e-5, rtol=0)
    torch.testing.assert_close(got.entropy[m], recomputed.entropy[m], atol=1e-5, rtol=0)
    assert (got.logprobs[~m] == 0).all() and (got.entropy[~m] == 0).all()


class CountingModel:
    """A fake model for `engine.sample`: fixed logits per row (row i always prefers token 3 + i), counting step rows."""

    def __init__(self, rows: int, vocab: int = 16) -> None:
        self.logits = torch.full((rows, vocab), -10.0)
        for i in range(rows):
            self.logits[i, 3 + i] = 10.0
        self.rows_per_step: list[int] = []
        self.index = torch.arange(rows)

    def step(self, ids, mask, positions, cache):
        assert mask.shape[0] == ids.shape[0] == positions.shape[0] == len(cache.index)
        self.rows_per_step.append(ids.shape[0])
        return self.logits[cache.index]


class FakeCache:
    def __init__(self, rows: int) -> None:
        self.index = torch.arange(rows)
        self.layers = [self]

    def batch_select_indices(self, keep: torch.Tensor) -> None:
        self.index = self.index[keep]


def test_sample_drops_each_row_from_the_batch_and_cache_at_its_stop():
    model, cache = CountingModel(rows=3), FakeCache(3)
    ids, mask = torch.ones((3, 2), dtype=torch.long), torch.ones((3, 2), dtype=torch.long)
    # Row 0 draws 3 (a stop) at once; row 1 draws 4, a stop too; row 2 draws 5 every step until the budget.
    stack = FakeStack(lambda rows: model.logits.clone(), model.step, cache)
    out = engine.sample(
        stack,
        "policy",
        ids,
        mask,
        max_new_tokens=4,
        stop_ids=[3, 4],
        pad_id=0,
        temperature=0.0,
        with_logprobs=True,
        share_prompts=False,
    )
    assert model.rows_per_step == [1, 1, 1]  # rows 0 and 1 never ran again after their stop
    assert out.sequences[:, 2:].tolist() == [[3, 0, 0, 0], [4, 0, 0, 0], [5, 5, 5, 5]]
    assert out.logprobs.shape == (3, 4) and (out.logprobs[:2, 1:] == 0).all()


def test_sample_without_a_prunable_cache_pads_finished_rows_and_stops_when_all_have():
    model = CountingModel(rows=2)
    cache = FakeCache(2)
    cache.layers = []  # not prunable: rows stay in the batch
    ones = torch.ones((2, 1), dtype=torch.long)
    stack = FakeStack(lambda rows: model.logits.clone(), model.step, cache)
    out = engine.sample(
        stack, "policy", ones, ones, max_new_tokens=5, stop_ids=[4], pad_id=0, temperature=0.0, share_prompts=False
    )
    assert model.rows_per_step == [2, 2, 2, 2]
    assert out.sequences[:, 1:].tolist() == [[3, 3, 3, 3, 3], [4, 0, 0, 0, 0]]


def test_draw_truncates_with_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    torch.manual_seed(0)
    top_k = {int(draw(logits, 1.0, top_k=2)) for _ in range(200)}
    top_p = {int(draw(logits, 1.0, top_p=0.7)) for _ in range(200)}
    assert top_k == {0, 1} and top_p == {0, 1}
    assert int(draw(logits, 0.0)) == 0
