"""Merge one adapter into its base: a standalone transformers model folder for vLLM, TGI or llama.cpp.

The base is loaded again *unquantized* in the target dtype: merging into NF4 weights would round the
merged weights to 4 bits a second time, so even a role trained on an NF4 base is merged into the
original full-precision checkpoint (a checkpoint saved already quantized is dequantized first).
W' = W + (alpha / r) * B A is what PEFT's `merge_and_unload` computes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.inference.sources import resolve_adapter_source
from lora_rlhf.io import atomic_dir
from lora_rlhf.models.names import resolve_model_name

logger = logging.getLogger(__name__)

MergeDType = Literal["bfloat16", "float16", "float32"]
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# How closely a merge in each dtype reproduces adapter-on-base computed in float32, as
# max |logit difference| / max(1, max |logit|): the rounding of the merged weights (base included) to
# bf16/fp16 is the whole error (bf16 keeps 8 significant bits, fp16 11); both sides are computed in
# float32. Measured on the tiny test models: ~2e-6 (fp32), ~5e-3 (fp16), ~3e-2 (bf16).
TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 6e-2}


@dataclasses.dataclass
class MergeCheck:
    max_abs_diff: float  # max |logit difference| between merged and adapter-on-base
    logit_scale: float  # max |logit| of adapter-on-base

    @property
    def relative(self) -> float:
        return self.max_abs_diff / max(1.0, self.logit_scale)

    def within(self, dtype: str) -> bool:
        return self.relative <= TOLERANCE[dtype]


def merge_adapter(
    adapter: str | Path,
    output: str | Path,
    *,
    base: str | None = None,
    dtype: MergeDType = "bfloat16",
    trust_remote_code: bool = False,
) -> Path:
    """Write base + `adapter` merged into `output` (safetensors, config, tokenizer), atomically.

    `base` defaults to the adapter's `base_model_name_or_path`. Returns `output`.
    """
    if dtype not in _DTYPES:
        raise LoraRlhfError(f"dtype: {dtype!r} is not one of {', '.join(_DTYPES)}")
    folder = resolve_adapter_source(str(adapter))
    source = resolve_model_name(base or adapter_base_name(folder))
    model, tokenizer = _load_unquantized(source, _DTYPES[dtype], trust_remote_code)
    from peft import PeftModel

    merged = PeftModel.from_pretrained(model, str(folder)).merge_and_unload(safe_merge=True)
    merged.config.name_or_path = ""
    with atomic_dir(output) as tmp:
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if (folder / "head.safetensors").is_file():
            # A reward/value role's scalar head reads the merged model's last hidden state.
            shutil.copy2(folder / "head.safetensors", tmp / "head.safetensors")
        info = {"base": base or adapter_base_name(folder), "adapter": str(adapter), "dtype": dtype}
        (tmp / "lora_rlhf_merge.json").write_text(json.dumps(info, indent=2) + "\n")
    logger.info("merged %s into %s (%s) -> %s", adapter, source, dtype, output)
    return Path(output)


def adapter_base_name(folder: Path) -> str:
    """The base model an adapter folder was trained on (its adapter_config.json)."""
    config = json.loads((folder / "adapter_config.json").read_text())
    name = config.get("base_model_name_or_path")
    if not name:
        raise LoraRlhfError(f"{folder}/adapter_config.json names no base model: pass the base explicitly")
    return name


@torch.no_grad()
def merge_difference(
    merged: str | Path, adapter: str | Path, texts: Sequence[str], *, base: str | None = None
) -> MergeCheck:
    """Compare the merged folder's logits with base + adapter (unmerged), both computed in float32."""
    from peft import PeftModel

    folder = resolve_adapter_source(str(adapter))
    source = resolve_model_name(base or adapter_base_name(folder))
    reference, tokenizer = _load_unquantized(source, torch.float32, False)
    reference = PeftModel.from_pretrained(reference, str(folder)).eval()
    # Computed in float32: what is compared is the merged weights (rounded to their dtype), not the
    # rounding of bf16/fp16 arithmetic, which adapter-on-base in that dtype shares.
    candidate, _ = _load_unquantized(str(merged), torch.float32, False)
    candidate.eval()
    worst, scale = 0.0, 0.0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")
        expected = reference(**ids).logits
        worst = max(worst, (expected - candidate(**ids).logits.float()).abs().max().item())
        scale = max(scale, expected.abs().max().item())
    return MergeCheck(worst, scale)


def _load_unquantized(source: str, dtype: torch.dtype, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LoraRlhfError(f"could not load base model {source!r}: {first}") from exc
    if getattr(model, "hf_quantizer", None) is not None:
        # A checkpoint saved quantized (bitsandbytes, ...): back to `dtype` before merging.
        model = model.dequantize().to(dtype)
    return model, tokenizer
