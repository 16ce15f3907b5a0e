"""Tiny random-weight models built from configs, for tests and the smoke recipe (no downloads); random NF4
models at real shapes and adapter folders for tests and scripts; what the benchmark scripts share (`bench`).
Helpers that only the tests use live under tests/."""

from lora_rlhf.models.tiny import TINY_ARCHITECTURES, make_tiny_model, tiny_model_dir

__all__ = ["TINY_ARCHITECTURES", "make_tiny_model", "tiny_model_dir"]
