"""Chunked log-probs equal the model's own `log_softmax(logits)` on every decoder family (issue 11).

Granite divides its logits by `logits_scaling`, Cohere multiplies them by `logit_scale`, Gemma soft-caps
them: a projection that applies only the LM head trains and measures KL on another distribution than
the one `generate` samples from.
"""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import LlamaForCausalLM

from lora_rlhf import LoraSettings, RoleStack
from lora_rlhf.eval.kl import sequence_kl
from lora_rlhf.models import forward
from lora_rlhf.models.logits import projection_error, projection_for

from tiny_architectures import ARCHITECTURES, tiny_causal_lm, tiny_config


def left_padded_batch(vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    mask[2, :7] = 0
    return ids.masked_fill(mask == 0, 0), mask


def sharpened(model):
    """Random tiny models have logits near 0, where a soft cap of 30 is the identity: scale them up."""
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(100.0)
    return model


def reference_logprobs(model, ids: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """HF's own answer: (B, T-1) log_softmax(model(...).logits / temperature) at the next tokens."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits.float()
    return (logits[:, :-1] / temperature).log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_chunked_logprobs_match_the_models_own_logits(arch):
    model = sharpened(tiny_causal_lm(arch))
    stack = RoleStack(model)
    ids, mask = left_padded_batch(model.config.vocab_size)
    with torch.no_grad():
        ours = forward.logprobs(stack, "base", ids, mask, chunk_size=5, temperature=0.7).logprobs
    theirs = reference_logprobs(model, ids, mask, temperature=0.7)
    real = mask[:, 1:].bool() & mask[:, :-1].bool()
    assert stack.chunked_logits, f"{arch}: the chunked projection should reproduce this family's forward"
    assert (ours - theirs)[real].abs().max().item() < 1e-4


@pytest.mark.parametrize("arch", ["granite", "cohere", "gemma2"])
def test_the_lm_head_alone_is_wrong_on_families_that_transform_their_logits(arch):
    """The control: the transform matters on these tiny models, so the test above can fail."""
    model = sharpened(tiny_causal_lm(arch))
    head_only = projection_for(model).__class__(model.get_output_embeddings())
    assert projection_error(model, model.base_model, head_only) > 1e-2
    assert projection_error(model, model.base_model, projection_for(model)) < 1e-4


class _ScaledLlama(LlamaForCausalLM):
    """A model with a logit transform no config field announces."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 3.0
        return out


def test_an_unknown_logit_transform_falls_back_to_the_models_forward(caplog):
    torch.manual_seed(0)
    model = _ScaledLlama(tiny_config("llama")).eval()
    with caplog.at_level(logging.WARNING, logger="lora_rlhf.models.logits"):
        stack = RoleStack(model)
    assert not stack.chunked_logits
    assert "own forward" in caplog.text
    ids, mask = left_padded_batch(model.config.vocab_size)
    with torch.no_grad():
        out = forward.logprobs(stack, "base", ids, mask, with_entropy=True)
    real = mask[:, 1:].bool() & mask[:, :-1].bool()
    assert (out.logprobs - reference_logprobs(model, ids, mask))[real].abs().max().item() < 1e-5
    assert out.entropy is not None and out.entropy.shape == out.logprobs.shape


@pytest.mark.parametrize("arch", ["granite", "gemma2"])
def test_eval_kl_is_measured_on_the_models_own_distribution(arch):
    model = sharpened(tiny_causal_lm(arch))
    stack = RoleStack(model)
    stack.add_role("sft", LoraSettings(r=4))
    stack.copy_role("sft", "policy")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in stack.role_parameters("policy"):
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    ids, mask = left_padded_batch(model.config.vocab_size)
    response = torch.zeros_like(mask)
    response[:, -5:] = 1
    kl = sequence_kl(stack, "policy", "sft", ids, mask, response, chunk_size=3)

    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logp = {}
    for role in ("policy", "sft"):
        with stack.use(role), torch.no_grad():
            logits = stack.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
        logp[role] = logits[:, :-1].log_softmax(-1)
    per_token = (logp["policy"].exp() * (logp["policy"] - logp["sft"])).sum(-1)
    expected = (per_token * response[:, 1:]).sum(-1)
    assert kl.min() > 0
    torch.testing.assert_close(kl, expected, rtol=1e-4, atol=1e-6)
