"""Sizes read off a transformers model config, shared by decoding's memory check (models/dequantized.py) and the
memory plan (lora_rlhf.plan.shapes)."""

from __future__ import annotations


def kv_dim_of(config) -> int:
    """Key (= value) width per token per layer of a text config: kv heads x head dim."""
    heads = int(getattr(config, "num_attention_heads", 1) or 1)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    return kv_heads * int(getattr(config, "head_dim", None) or int(config.hidden_size) // heads)
