"""Adapter folders and run directories with non-trivial random adapters, for tests and examples (offline).

A fresh LoRA adapter has B = 0 and so equals its base; here B is drawn at random (A keeps PEFT's
random init) so every adapter, and the bare base, answers differently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from lora_rlhf.eval.result import EvalResult, write_eval_result
from lora_rlhf.models import BaseModelConfig, LoraSettings, RoleStack
from lora_rlhf.paths import RunLayout


def make_adapters(
    model_dir: str | Path, out_dir: str | Path, names: Sequence[str], *, r: int = 4, scale: float = 0.3, seed: int = 0
) -> dict[str, Path]:
    """Write one random adapter per name for the model at `model_dir` into out_dir/<name>; {name: folder}."""
    stack = RoleStack.load(BaseModelConfig(str(model_dir), quantization="none", device="cpu"))
    folders = {}
    for index, name in enumerate(names):
        torch.manual_seed(seed + index)  # PEFT draws A from the global RNG: the same folders whatever ran before
        stack.add_role(name, LoraSettings(r=r, dropout=0.0))
        generator = torch.Generator().manual_seed(seed + index)
        with torch.no_grad():
            for key, param in stack.model.named_parameters():
                if f".lora_B.{name}." in key:
                    param.copy_(torch.randn(param.shape, generator=generator).to(param.dtype) * scale)
        folders[name] = stack.save_role(name, Path(out_dir) / name)
    return folders


def make_run_dir(
    model_dir: str | Path,
    run_dir: str | Path,
    roles: Sequence[str] = ("sft", "policy"),
    *,
    eval_figures: Mapping[str, Any] | None = None,
) -> Path:
    """A run directory as the pipeline writes it: recipe.yaml (model section), adapters/<role>/, eval.json (from
    `eval_figures`, eval.json's keys)."""
    run = RunLayout(run_dir)
    make_adapters(model_dir, run.adapters, roles)
    recipe = {"model": {"name_or_path": str(model_dir), "quantization": "none", "device": "cpu"}}
    run.recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    if eval_figures is not None:
        write_eval_result(run.eval_path, EvalResult.from_json(eval_figures, "eval_figures"))
    return run.path
