"""The base model config for inference: from a name (folder, Hub id, built-in) or from a run directory's recipe."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.models.base import BaseModelConfig
from lora_rlhf.models.names import resolve_model_name


def base_config(name: str, **options: Any) -> BaseModelConfig:
    """A BaseModelConfig for `name`; `options` are BaseModelConfig fields (quantization, device, ...), None = default."""
    given = {k: v for k, v in options.items() if v is not None}
    _check_fields(given)
    return BaseModelConfig(name_or_path=resolve_model_name(name), **given)


def base_config_from_run(run_dir: str | Path, **options: Any) -> BaseModelConfig:
    """The `model` section of a run's recipe.yaml, with `options` (None = keep the recipe's) on top."""
    import yaml

    from lora_rlhf.config.loader import build

    path = Path(run_dir).expanduser() / "recipe.yaml"
    if not path.is_file():
        raise LoraRlhfError(f"{run_dir} is not a run directory: recipe.yaml is missing")
    recipe = yaml.safe_load(path.read_text()) or {}
    model = dict(recipe.get("model") or {})
    given = {k: v for k, v in options.items() if v is not None}
    _check_fields(given)
    config = build(BaseModelConfig, {**model, **given}, "model.")
    return dataclasses.replace(config, name_or_path=resolve_model_name(config.name_or_path))


def run_base_name(run_dir: str | Path) -> str | None:
    """The model name a run's recipe names (e.g. "demo:smollm2"), before resolution to a folder."""
    import yaml

    path = Path(run_dir).expanduser() / "recipe.yaml"
    if not path.is_file():
        return None
    recipe = yaml.safe_load(path.read_text()) or {}
    return (recipe.get("model") or {}).get("name_or_path")


def _check_fields(options: dict[str, Any]) -> None:
    allowed = {f.name for f in dataclasses.fields(BaseModelConfig)} - {"name_or_path"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise LoraRlhfError(f"unknown base model option {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
