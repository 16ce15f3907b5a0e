"""Tiny random-weight models built from configs, for tests and the smoke recipe (no downloads)."""

from lora_rlhf.testing.tiny import TINY_ARCHITECTURES, make_tiny_model, tiny_model_dir

__all__ = ["TINY_ARCHITECTURES", "make_tiny_model", "tiny_model_dir"]
