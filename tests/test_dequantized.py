"""Decoding from a 4-bit base with its weights dequantized once per call (models/dequantized.py)."""

from __future__ import annotations

import pytest
import torch

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.models import dequantized, engine
from lora_rlhf.models.base import BaseModelConfig
from lora_rlhf.models.roles import RoleStack


def nf4_stack(folder: str, **kwargs) -> RoleStack:
    stack = RoleStack.load(BaseModelConfig(name_or_path=folder, quantization="nf4", device="cpu", **kwargs))
    torch.manual_seed(0)
    stack.add_role("sft")
    stack.copy_role("sft", "policy")
    with torch.no_grad():  # an adapter that changes the answers, so LoRA on top of the copy is exercised
        for p in stack.role_parameters("policy"):
            p.add_(torch.randn_like(p) * 0.2)
    return stack


PROMPTS = ["sort the numbers 3 1 2", "hello world", "reverse: a b c d e f"]
NEW_TOKENS = 10


def encoded(stack: RoleStack):
    return stack.tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")


def sampled(stack: RoleStack, seed: int = 0):
    enc = encoded(stack)
    torch.manual_seed(seed)
    return engine.sample(
        stack,
        "policy",
        enc.input_ids,
        enc.attention_mask,
        max_new_tokens=NEW_TOKENS,
        temperature=0.8,
        with_logprobs=True,
    )


def counting(monkeypatch) -> list[int]:
    calls = []
    dequantize = dequantized._dequantize
    monkeypatch.setattr(dequantized, "_dequantize", lambda *a: calls.append(1) or dequantize(*a))
    return calls


@pytest.mark.parametrize("settings", [{}, {"double_quant": False}, {"compute_dtype": "bfloat16"}])
def test_dequantized_decoding_equals_the_4bit_path_bit_for_bit(tiny_llama, settings, monkeypatch):
    stack = nf4_stack(tiny_llama, **settings)
    linears = dequantized._four_bit_linears(stack.model)
    assert linears and dequantized.dequantized_bytes(stack.model) > 0
    calls = counting(monkeypatch)
    stack.dequantized_decoding = False
    per_step = sampled(stack)
    assert not calls
    stack.dequantized_decoding = True
    once = sampled(stack)
    # every 4-bit linear dequantized once for the whole call of several decoding steps, not once per step
    assert len(calls) == len(linears) and (once.logprobs != 0).sum(dim=1).max() > 3
    assert torch.equal(per_step.sequences, once.sequences)
    assert torch.equal(per_step.logprobs, once.logprobs) and torch.equal(per_step.entropy, once.entropy)
    assert all("forward" not in m.__dict__ for m in linears)  # the modules have their own forward back


def test_no_copy_where_it_does_not_fit_in_half_the_memory_left_beside_the_kv_cache(tiny_llama, monkeypatch):
    stack = nf4_stack(tiny_llama)
    needed = dequantized.dequantized_bytes(stack.model)
    tokens = encoded(stack).input_ids.shape[1] + NEW_TOKENS  # the cache decoding will hold, per row
    kv = dequantized.kv_cache_bytes(stack.model, len(PROMPTS), tokens)
    config = stack.model.config  # llama: 2 (keys, values) x layers x kv heads x head dim x fp32, per row and token
    assert kv == 2 * len(PROMPTS) * tokens * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4
    calls = counting(monkeypatch)
    monkeypatch.setattr(dequantized, "free_bytes", lambda device: 2 * needed + kv - 1)
    assert not dequantized.copy_fits(needed, stack.device, kv)
    sampled(stack)
    assert not calls
    monkeypatch.setattr(dequantized, "free_bytes", lambda device: 2 * needed + kv)
    assert dequantized.copy_fits(needed, stack.device, kv)
    sampled(stack)
    assert calls


def test_auto_takes_the_copy_on_the_cpu_only(tiny_llama, monkeypatch):
    # On CUDA bitsandbytes' fused 4-bit kernel serves small batches: "auto" leaves it alone there, true does not.
    stack = nf4_stack(tiny_llama)
    assert stack.dequantized_decoding == "auto"
    calls = counting(monkeypatch)
    with pytest.raises(LoraRlhfError, match="dequantized_decoding"):
        BaseModelConfig(name_or_path=tiny_llama, dequantized_decoding="yes")
    monkeypatch.setattr(RoleStack, "device", property(lambda self: torch.device("meta")))  # not a CPU
    with stack.dequantized_base(3, 16):
        assert not any("forward" in m.__dict__ for m in dequantized._four_bit_linears(stack.model))
    stack.dequantized_decoding = True
    with stack.dequantized_base(3, 16), torch.no_grad():
        assert all("forward" in m.__dict__ for m in dequantized._four_bit_linears(stack.model))
    assert not calls  # nothing ran: the copies are made on a module's first call


def test_processes_on_one_machine_share_its_free_memory(monkeypatch):
    import psutil

    alone = dequantized.free_bytes(torch.device("cpu"))
    assert 0 < alone <= psutil.virtual_memory().total
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert dequantized.free_bytes(torch.device("cpu")) <= alone // 4 * 1.1  # the machine's memory moves a little


def test_an_unquantized_base_has_nothing_to_dequantize(tiny_llama):
    stack = RoleStack.load(BaseModelConfig(name_or_path=tiny_llama, quantization="none", device="cpu"))
    assert dequantized.dequantized_bytes(stack.model) == 0


def test_the_dequantized_forward_refuses_gradients(tiny_llama):
    stack = nf4_stack(tiny_llama)
    (linear, *_) = dequantized._four_bit_linears(stack.model)
    x = torch.randn(2, linear.in_features, requires_grad=True)
    with dequantized.dequantized_linears(stack.model):
        with pytest.raises(RuntimeError, match="without gradients"):
            linear(x)
        with torch.no_grad():
            got = linear(x)
    torch.testing.assert_close(got, linear(x).detach(), atol=0, rtol=0)  # the module's own 4-bit forward
