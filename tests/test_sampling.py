"""The one sampler (models/sampling.py, issue 26): the same seeds give the same samples as before it existed, and
the per-row rule the server uses draws what the rollout rule draws when the options agree."""

from __future__ import annotations

import pytest
import torch

from lora_rlhf.data.batching import pad_left
from lora_rlhf.inference import GenerationOptions
from lora_rlhf.models import engine
from lora_rlhf.models.lora import LoraSettings
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.models.sampling import draw, draw_rows, warped

from fake_decoder import FakeStack
from tiny_architectures import tiny_causal_lm

PROMPTS = [[5, 6, 7, 8, 9], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14, 15, 16, 17, 18], [19, 20], [19, 20], [21, 22, 23]]

# Responses `RoleStack.decode` sampled at commit eaa05e7 (before the one sampler) under torch.manual_seed(1234).
BEFORE = {
    (1.0, 0, 1.0): [
        [21, 19, 70, 71, 6, 93],
        [6, 22, 58, 62, 2, 26],
        [43, 24, 26, 27, 45, 76],
        [39, 86, 31, 30, 29, 41],
        [36, 77, 29, 36, 84, 31],
        [26, 3, 19, 33, 44, 94],
    ],
    (0.7, 20, 0.9): [
        [19, 18, 50, 62, 15, 84],
        [2, 26, 54, 61, 2, 26],
        [29, 22, 23, 22, 41, 69],
        [23, 79, 15, 10, 23, 26],
        [23, 59, 22, 36, 85, 16],
        [41, 2, 26, 43, 43, 95],
    ],
}


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), list(BEFORE))
def test_the_same_seed_samples_what_it_sampled_before_the_one_sampler(temperature, top_k, top_p):
    stack = RoleStack(tiny_causal_lm("llama"))
    stack.add_role("policy", LoraSettings(r=4, alpha=8, dropout=0.0))
    torch.manual_seed(1)
    for p in stack.role_parameters("policy"):
        torch.nn.init.normal_(p, std=0.1)
    ids, mask = pad_left(PROMPTS, 0)
    torch.manual_seed(1234)
    got = engine.sample(
        stack,
        "policy",
        ids,
        mask,
        max_new_tokens=6,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        stop_ids=[],
        pad_id=0,
    )
    assert got.sequences[:, ids.shape[1] :].tolist() == BEFORE[temperature, top_k, top_p]


class RandomModel:
    """A fake model for `engine.sample`: fresh random logits for each row still decoding at every step."""

    def __init__(self, vocab: int = 12) -> None:
        self.vocab = vocab
        self.logits = torch.Generator().manual_seed(7)

    def next(self, rows: int) -> torch.Tensor:
        return torch.randn((rows, self.vocab), generator=self.logits) * 2

    def step(self, ids, mask, positions, cache) -> torch.Tensor:
        return self.next(ids.shape[0])


class RowCache:
    layers: list

    def __init__(self) -> None:
        self.layers = [self]

    def batch_select_indices(self, keep: torch.Tensor) -> None:
        pass


def reference(model: RandomModel, rows: int, steps: int, stops: set[int], temperature: float) -> list[list[int]]:
    """The draw rollouts have made since issue 10, written out: at every step one float64 uniform per row still
    decoding, in row order, from torch's global generator; the token where softmax(logits / T)'s CDF exceeds it."""
    out: list[list[int]] = [[] for _ in range(rows)]
    live = list(range(rows))
    logits = model.next(rows)
    for t in range(steps):
        u = torch.rand((len(live), 1), dtype=torch.float64)
        cdf = (logits.float() / temperature).softmax(-1).double().cumsum(-1)
        tokens = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(1).clamp(max=model.vocab - 1).tolist()
        for row, token in zip(live, tokens, strict=True):
            out[row].append(token)
        live = [row for row, token in zip(live, tokens, strict=True) if token not in stops]
        if not live or t + 1 == steps:
            return out
        logits = model.next(len(live))
    return out


def test_sample_draws_one_global_uniform_per_live_row_in_row_order():
    rows, steps, stops = 5, 8, {0, 1}
    torch.manual_seed(3)
    expected = reference(RandomModel(), rows, steps, stops, temperature=0.8)
    model = RandomModel()
    ids = torch.ones((rows, 2), dtype=torch.long)
    torch.manual_seed(3)
    got = engine.sample(
        FakeStack(model.next, model.step, RowCache()),
        "policy",
        ids,
        ids,
        max_new_tokens=steps,
        stop_ids=stops,
        pad_id=-1,
        temperature=0.8,
        share_prompts=False,  # the fake model has no cache to share
    )
    responses = [[t for t in row if t != -1] for row in got.sequences[:, 2:].tolist()]
    assert responses == expected
    assert any(len(r) < steps for r in responses)  # the case is real: some rows left early


@pytest.mark.parametrize("options", [dict(temperature=1.0), dict(temperature=0.7, top_k=4), dict(top_p=0.8)])
def test_per_row_draws_equal_the_batch_draw_when_every_row_has_the_same_options(options):
    logits = torch.randn((64, 30), generator=torch.Generator().manual_seed(0))
    t = options.get("temperature", 1.0)
    torch.manual_seed(5)
    batch = draw(logits, t, top_k=options.get("top_k", 0), top_p=options.get("top_p", 1.0))
    after_batch = torch.rand(1)
    per_row = [GenerationOptions(temperature=t, top_k=options.get("top_k", 0), top_p=options.get("top_p", 1.0))] * 64
    torch.manual_seed(5)
    rows = draw_rows(warped(logits, per_row), per_row, [None] * 64)
    assert torch.equal(rows, batch) and torch.equal(torch.rand(1), after_batch)  # the same draws, the same RNG use
