"""Tiny random-weight causal LMs of many architectures, built from configs offline (no tokenizer).

Used to check that what the toolkit computes outside a model's `forward` (chunked log-probs, the
reward head's last-token read) agrees with the model itself on every decoder family transformers ships.
"""

from __future__ import annotations

from typing import Any

import torch

# Decoder families whose config transformers builds offline, and what each needs beyond the common sizes.
# The overrides switch on the logit transforms the released checkpoints use (Granite divides by 16, Gemma
# soft-caps at 30), so a toolkit that ignores them fails here.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama": {},
    "qwen2": {},
    "qwen3": {},
    "mistral": {},
    "gemma2": {"final_logit_softcapping": 30.0},
    "gemma3_text": {"final_logit_softcapping": 30.0},
    "phi3": {},
    "olmo2": {},
    "granite": {"logits_scaling": 16.0},
    "cohere": {"logit_scale": 0.0625},
    "gpt2": {},
    "gpt_neox": {},
    "falcon": {"new_decoder_architecture": True, "num_kv_heads": 2},
    "stablelm": {},
    "starcoder2": {},
}
_NO_HEAD_DIM = {"falcon", "gpt2", "gpt_neox", "stablelm", "starcoder2", "phi3", "olmo2"}


def tiny_config(arch: str, *, vocab_size: int = 96, hidden: int = 32, layers: int = 2):
    """A config of `arch` small enough to build and run in milliseconds, special tokens inside the vocab."""
    from transformers import AutoConfig

    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}, not {arch!r}")
    kwargs: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    if arch not in _NO_HEAD_DIM:
        kwargs["head_dim"] = hidden // 4
    kwargs.update(ARCHITECTURES[arch])
    return AutoConfig.for_model(arch, **kwargs)


def tiny_causal_lm(arch: str, *, seed: int = 0, **sizes: int):
    """A random-weight `AutoModelForCausalLM` of `arch` (see `tiny_config`), in eval mode, float32."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **sizes), dtype=torch.float32)
    return model.eval()
