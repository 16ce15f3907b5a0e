"""Continuous batching (inference/engine.py): rows that join a running batch mid-way, next to rows of other
adapters, answer exactly as each would alone through `generate`, on every decoder family transformers ships;
the registry's holds keep an adapter attached until its last live row ends."""

from __future__ import annotations

import threading
import time
import types

import pytest
import torch

from lora_rlhf.data.batching import pad_left
from lora_rlhf.inference import AdapterRegistry, GenerationOptions, UnknownAdapter
from lora_rlhf.inference.engine import DecodeEngine, Row
from lora_rlhf.models.lora import LoraSettings
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.models.row_adapters import RowAdapters
from lora_rlhf.testing.adapters import make_adapters
from lora_rlhf.testing.reference import reference_generate, sampling_kwargs

from tiny_architectures import ARCHITECTURES, tiny_causal_lm

# (role, prompt ids, budget); admitted in three waves: before the first step, after two steps, after three.
ROWS = [
    ("a", [5, 6, 7, 8, 9], 9),
    ("b", [19, 20], 10),
    ("base", [10, 11, 12, 13, 14, 15, 16, 17, 18], 8),
    ("b", [21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32], 7),
    ("a", [5, 6, 7, 8, 9], 9),
    ("base", [33, 34, 35], 6),
]
WAVES = [(0, 3), (3, 5), (5, 6)]


class IdsTokenizer:
    """Prompts written as token ids ("5 6 7"), for the tiny models that have no tokenizer."""

    pad_token_id = 0

    def __init__(self, eos: int) -> None:
        self.eos_token_id = eos

    def __call__(self, texts, **kwargs):
        ids, mask = pad_left([[int(t) for t in text.split()] for text in texts], self.pad_token_id)
        return types.SimpleNamespace(input_ids=ids, attention_mask=mask)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(str(int(i)) for i in ids)


def two_adapter_stack(arch: str) -> RoleStack:
    stack = RoleStack(tiny_causal_lm(arch))
    torch.manual_seed(1)
    for role in ("a", "b"):
        stack.add_role(role, LoraSettings(r=4, alpha=8, dropout=0.0))
        for p in stack.role_parameters(role):
            torch.nn.init.normal_(p, std=0.1)
    return stack


def alone(stack: RoleStack, role: str, prompt: list[int], budget: int) -> str:
    """The row's greedy answer from transformers' `generate`, up to (not including) its first end id."""
    ids = torch.tensor([prompt])
    stops = sorted(stack.eos_ids())
    out = reference_generate(
        stack,
        role,
        ids,
        torch.ones_like(ids),
        max_new_tokens=budget,
        pad_token_id=0,
        eos_token_id=stops,
        **sampling_kwargs(0.0),
    )[0, len(prompt) :].tolist()
    answer = []
    for token in out:
        if token in stops:
            break
        answer.append(token)
    return " ".join(map(str, answer))


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_rows_joining_a_running_batch_answer_as_alone(arch):
    stack = two_adapter_stack(arch)
    # An end id that greedy decoding reaches early in one row: rows then leave the batch at different steps.
    early = reference_generate(
        stack,
        "a",
        torch.tensor([ROWS[0][1]]),
        torch.ones(1, 5, dtype=torch.long),
        max_new_tokens=4,
        pad_token_id=0,
        eos_token_id=None,
        **sampling_kwargs(0.0),
    )
    stack.tokenizer = IdsTokenizer(int(early[0, 5 + 2]))
    rows = [Row(role, " ".join(map(str, p)), GenerationOptions(max_new_tokens=n)) for role, p, n in ROWS]
    engine, done, joined = DecodeEngine(stack), {}, 0
    for wave, (start, end) in enumerate(WAVES):
        if not engine.can_admit():  # a cache that cannot take rows mid-batch: drain it first
            while not engine.idle:
                done.update(engine.step())
        joined += not engine.idle
        engine.admit(rows[start:end], range(start, end))
        for _ in range(2 + wave):
            done.update(engine.step())
    while not engine.idle:
        done.update(engine.step())
    for i, (role, prompt, budget) in enumerate(ROWS):
        assert done[i].text == alone(stack, role, prompt, budget), (arch, i, role)
        assert done[i].prompt_tokens == len(prompt)
    assert any(done[i].finish_reason == "stop" for i in done)  # the case is real: some row stopped early
    if arch in ("llama", "qwen2", "gpt2", "gpt_neox"):
        assert joined == 2  # plain KV caches: both later waves joined rows still decoding


def test_a_detach_waits_for_the_rows_holding_the_adapter(tiny_llama, tmp_path):
    registry = AdapterRegistry.load(tiny_llama, quantization="none", device="cpu")
    registry.attach("spare", make_adapters(tiny_llama, tmp_path, ["spare"])["spare"])
    with registry.lock:
        registry.require("spare")
        held = registry.hold("spare")  # a live row decoding with it
    detach = threading.Thread(target=registry.detach, args=("spare",))
    detach.start()
    deadline = time.monotonic() + 30
    while True:  # once the detach has begun, no new row may take the adapter
        try:
            registry.require("spare")
        except UnknownAdapter:
            break
        assert time.monotonic() < deadline, "the detach did not begin"
        time.sleep(0.01)
    time.sleep(0.2)
    assert detach.is_alive() and registry.stack.has_role("spare")  # still there for the row holding it
    with registry.lock:
        registry.release(held)
    detach.join(timeout=30)
    assert not detach.is_alive() and not registry.stack.has_role("spare")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize(
    ("names", "path"),
    [
        (["a", "a", "__base__", "b", "b", "b"], "_segment_hook"),  # a few runs of one adapter: two mm per run
        (["a", "__base__", "b", "a", "b", "__base__"], "_delta_hook"),  # interleaved: gathered per row, bmm
    ],
)
def test_row_adapters_equal_peft_mixed_batches(arch, names, path, monkeypatch):
    # The per-row LoRA (models/row_adapters.py), by runs and by rows, against PEFT's mixed forward (`adapter_names`).
    from lora_rlhf.models import row_adapters

    built = []
    hook = getattr(row_adapters, path)
    monkeypatch.setattr(row_adapters, path, lambda *a: built.append(path) or hook(*a))
    stack = two_adapter_stack(arch)
    ids = torch.tensor([[5, 6, 7, 8]]).expand(6, 4)  # one row six times: only the adapters tell them apart
    mask, positions = torch.ones_like(ids), torch.arange(4).expand(6, 4)
    assert RowAdapters(stack.model).supports(names)
    with torch.no_grad(), stack.evaluating():
        expected = stack.model(input_ids=ids, attention_mask=mask, position_ids=positions, adapter_names=names)
    roles = ["base" if n == "__base__" else n for n in names]
    got, _ = stack.next_token_logits(roles, ids, mask, positions)
    assert built, f"{path} was not used"
    torch.testing.assert_close(got, expected.logits[:, -1].float(), atol=1e-5, rtol=1e-5)
    for i in range(6):  # the case is real: each adapter changes the logits
        for j in range(i):
            assert torch.allclose(got[i], got[j], atol=1e-5) == (names[i] == names[j])
