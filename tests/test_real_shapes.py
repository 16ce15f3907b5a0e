"""The random NF4 builder of issue 30 (lora_rlhf/testing/random_quantized.py) on a tiny config: what it builds,
that a RoleStack trains on it, and that its construction never holds the unquantized linears."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from torch import nn
from transformers import AutoConfig

from lora_rlhf import LoraSettings, RoleStack
from lora_rlhf.models.base import prepare_for_training
from lora_rlhf.plan.measure import allocated_peak, resident_bytes
from lora_rlhf.plan.shapes import shape_of
from lora_rlhf.testing.random_quantized import random_nf4_model


def _config(arch: str = "llama"):
    extra = {"num_key_value_heads": 2} if arch in ("llama", "qwen2") else {}
    return AutoConfig.for_model(
        arch,
        vocab_size=512,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=3,
        num_attention_heads=4,
        tie_word_embeddings=False,
        **extra,
    )


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_every_decoder_linear_is_nf4_and_the_rest_in_the_compute_dtype(arch):
    model = random_nf4_model(_config(arch), compute_dtype=torch.bfloat16)
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    plain = [m for m in model.modules() if type(m) is nn.Linear]
    assert len(quantized) == 3 * 7 and plain == [model.get_output_embeddings()]
    assert all(m.weight.bnb_quantized and m.weight.quant_type == "nf4" for m in quantized)
    assert not any(p.device.type == "meta" for p in model.parameters())
    assert {p.dtype for n, p in model.named_parameters() if "weight" in n and p.dtype != torch.uint8} == {
        torch.bfloat16
    }
    assert model.is_loaded_in_4bit and model.config.quantization_config.bnb_4bit_quant_type == "nf4"
    # Same-shaped linears hold different codes and their own scale tensors.
    q, k = model.model.layers[0].mlp.gate_proj, model.model.layers[1].mlp.gate_proj
    assert not torch.equal(q.weight.data, k.weight.data)
    assert q.weight.quant_state.absmax.data_ptr() != k.weight.quant_state.absmax.data_ptr()
    with torch.no_grad():
        logits = model(input_ids=torch.randint(0, 512, (2, 9))).logits
    assert logits.shape == (2, 9, 512) and torch.isfinite(logits).all() and logits.std() > 0


def test_construction_never_holds_the_unquantized_linears():
    config = _config()
    with allocated_peak("cpu") as peak:
        model = random_nf4_model(config, compute_dtype=torch.float32)
    shape = shape_of(model)
    widest = max(i * o for i, o in shape.layer_linears) * 4
    final = resident_bytes(model)
    assert peak.bytes <= final + 2 * widest  # one linear's draw (and its product with std) at a time
    assert final < shape.linear_params * 4 / 2  # the fp32 linears alone would be > 2x the whole 4-bit model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_role_stack_trains_lora_on_it(dtype):
    model = prepare_for_training(
        random_nf4_model(_config(), compute_dtype=dtype), quantized=True, gradient_checkpointing=True
    )
    stack = RoleStack(model)
    stack.add_role("sft", LoraSettings(r=4, dropout=0.0))
    stack.set_trainable("sft")
    ids = torch.randint(3, 512, (2, 8))
    with stack.training():
        stack.logprobs("sft", ids, torch.ones_like(ids)).logprobs.mean().backward()
    grads = [p.grad for p in stack.role_parameters("sft") if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_kbit_base_stays_bf16_and_an_fp16_one_is_held_in_fp32_as_the_plan_counts(tmp_path, dtype):
    """PEFT's k-bit preparation upcasts an fp16 NF4 base's embeddings, norms and head to fp32 (fp16's range
    overflows); a bf16 one is left bf16 (models/base.py prepare_for_training). The plan counts what is held."""
    from lora_rlhf.plan import estimate
    from lora_rlhf.plan.shapes import model_shape

    config = _config()
    model = prepare_for_training(
        random_nf4_model(config, compute_dtype=dtype), quantized=True, gradient_checkpointing=False
    )
    kept = [p for p in model.parameters() if p.dtype != torch.uint8]
    held = torch.float32 if dtype == torch.float16 else torch.bfloat16
    assert {p.dtype for p in kept} == {held}
    assert not any(p.requires_grad for p in model.parameters())
    config.save_pretrained(tmp_path)
    shape = model_shape(str(tmp_path))
    assert sum(p.numel() for p in kept) == shape.other_params
    name = str(dtype).removeprefix("torch.")
    assert estimate.held_dtype("nf4", name) == str(held).removeprefix("torch.")
    nf4 = int(shape.linear_params * estimate.QUANT_BYTES["nf4"])
    assert estimate.base_weight_bytes(shape, "nf4", name) == nf4 + shape.other_params * held.itemsize
    assert estimate.base_weight_bytes(shape, "none", "bfloat16") == shape.params * 2
