"""NF4 on the CPU: a no-grad eval forward must not change later gradients (issue 11).

bitsandbytes repacks 4-bit weights for an inference kernel after an eval-mode forward without grad;
from then on layers with a bias (gpt2) crash in training and bias-free ones (llama) get wrong LoRA
gradients. The guard lives in base loading and in RoleStack, so every stack is safe, including one
built in Python from a model the user loaded.
"""

from __future__ import annotations

import pytest
import torch

from lora_rlhf import BaseModelConfig, LoraSettings, RoleStack
from lora_rlhf.models import engine, forward
from lora_rlhf.testing import make_tiny_model


def _user_built(folder) -> RoleStack:
    """A stack around a 4-bit model loaded with plain transformers, as a user would."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, device_map={"": "cpu"})
    return RoleStack(model, AutoTokenizer.from_pretrained(folder))


def _loaded(folder) -> RoleStack:
    return RoleStack.load(BaseModelConfig(str(folder), quantization="nf4"))


def _grads(stack: RoleStack, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    stack.set_trainable("sft")
    params = stack.role_parameters("sft")
    for p in params:
        p.grad = None
    torch.manual_seed(0)  # gpt2's dropout draws the same masks both times
    forward.logprobs(stack, "sft", ids, mask).logprobs.sum().backward()
    return [p.grad.clone() for p in params]


@pytest.mark.parametrize(("arch", "build"), [("gpt2", _user_built), ("llama", _loaded)])
def test_an_eval_forward_leaves_nf4_training_gradients_unchanged(tmp_path, arch, build):
    folder = make_tiny_model(tmp_path / arch, arch)
    stack = build(folder)
    assert any(type(m).__name__ == "Linear4bit" for m in stack.base_model.modules())
    stack.add_role("sft", LoraSettings(r=4, dropout=0.0))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in stack.role_parameters("sft"):
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)  # LoRA's B = 0 would zero A's gradient
    enc = stack.tokenizer(["sort the numbers 3 1 2", "hello world"], return_tensors="pt", padding=True)
    stack.model.train()
    before = _grads(stack, enc.input_ids, enc.attention_mask)

    with stack.evaluating(), torch.no_grad():  # a held-out evaluation, the RM bias step
        forward.logprobs(stack, "sft", enc.input_ids, enc.attention_mask)
    engine.sample(stack, "sft", enc.input_ids, enc.attention_mask, max_new_tokens=3, temperature=0.0)  # a rollout
    stack.model.train()
    after = _grads(stack, enc.input_ids, enc.attention_mask)

    assert all(g.abs().sum() > 0 for g in before)
    for g0, g1 in zip(before, after):
        torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-7)
