"""Built-in model names: one resolver in lora_rlhf.models, used by the pipeline and by inference."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lora_rlhf import LoraRlhfError
from lora_rlhf.models.names import resolve_model_name


def test_other_names_pass_through_unchanged():
    for name in ("HuggingFaceTB/SmolLM2-135M-Instruct", "./models/mine", "C:/weights"):
        assert resolve_model_name(name) == name


def test_tiny_names_resolve_to_the_tiny_model_folder(monkeypatch, tmp_path):
    import lora_rlhf.models.tiny

    monkeypatch.setattr(lora_rlhf.models.tiny, "tiny_model_dir", lambda arch: tmp_path / arch)
    assert resolve_model_name("tiny:qwen2") == str(tmp_path / "qwen2")


def test_an_unknown_tiny_architecture_is_an_error_naming_it_and_the_choices():
    with pytest.raises(LoraRlhfError, match=r"'tiny:bert'.*tiny:llama"):
        resolve_model_name("tiny:bert")


def test_inference_resolves_names_without_importing_the_pipeline():
    code = (
        "import sys, lora_rlhf.inference, lora_rlhf.inference.merge\n"
        "print(sorted(m for m in sys.modules if m.startswith(('lora_rlhf.pipeline', 'lora_rlhf.demo'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
