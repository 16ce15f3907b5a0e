"""Shared fixtures: tiny random-weight models written once per test session (no downloads)."""

from __future__ import annotations

import logging

import pytest

from lora_rlhf.testing import make_tiny_model

# bitsandbytes asks for an optional CPU kernel package on every 4-bit matmul; its absence is expected here.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, str]:
    """{arch: folder} for a tiny Llama, Qwen2 and GPT-NeoX."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: str(make_tiny_model(root / arch, arch)) for arch in ("llama", "qwen2", "gpt_neox")}


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_dirs) -> str:
    return tiny_model_dirs["llama"]
