"""The base model config for inference: from a name (folder, Hub id, built-in) or from a run directory's recipe.

A run directory is data, not code (issue 12): one downloaded from anywhere must not be able to switch on
`trust_remote_code` (running the model repository's Python) by saying so in its recipe.yaml, and neither can a
recipe file given to sft, rm, ppo or pipeline (issue 29): every command takes it from its own
--trust-remote-code flag only, and a recipe that asks for it is warned about.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lora_rlhf.config.loader import build
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.models.base import BaseModelConfig
from lora_rlhf.models.names import resolve_model_name
from lora_rlhf.paths import RunLayout

logger = logging.getLogger(__name__)


def base_config(name: str, **options: Any) -> BaseModelConfig:
    """A BaseModelConfig for `name`; `options` are BaseModelConfig fields (quantization, device, ...),
    None = default.
    """
    given = {k: v for k, v in options.items() if v is not None}
    _check_fields(given)
    return BaseModelConfig(name_or_path=resolve_model_name(name), **given)


def base_config_from_run(run_dir: str | Path, **options: Any) -> BaseModelConfig:
    """The `model` section of a run's recipe.yaml, with `options` (None = keep the recipe's) on top.

    `trust_remote_code` is never the recipe's: it is False unless `options` sets it (from the command line).
    """
    import yaml

    path = RunLayout(run_dir).recipe_path
    if not path.is_file():
        raise LoraRlhfError(f"{run_dir} is not a run directory: recipe.yaml is missing")
    recipe = yaml.safe_load(path.read_text()) or {}
    given = {k: v for k, v in options.items() if v is not None}
    model = untrusted_model_section(recipe.get("model") or {}, bool(given.pop("trust_remote_code", False)), path)
    _check_fields(given)
    config = build(BaseModelConfig, {**model, **given}, "model.")
    return dataclasses.replace(config, name_or_path=resolve_model_name(config.name_or_path))


def untrusted_model_section(model: Mapping[str, Any], trust_remote_code: bool, source: str | Path) -> dict[str, Any]:
    """The `model` section of a recipe read from `source` (a run directory's, or a recipe file), with
    trust_remote_code set to the flag's value.

    A recipe that asks for remote code gets a warning: only --trust-remote-code on the command line enables it
    (one rule for every command, issue 29).
    """
    section = dict(model)
    if section.get("trust_remote_code") and not trust_remote_code:
        logger.warning(
            "%s sets model.trust_remote_code, which a recipe or a run directory cannot turn on: loading without "
            "remote code (pass --trust-remote-code if you trust %s)",
            source,
            section.get("name_or_path"),
        )
    section["trust_remote_code"] = trust_remote_code
    return section


def warn_run_remote_code(run_dir: str | Path, trust_remote_code: bool) -> None:
    """Warn where a run's recipe.yaml asks for remote code, for the commands that read only its base's name
    (merge --run, export-reward RUN): only their --trust-remote-code turns it on (issue 29)."""
    import yaml

    path = RunLayout(run_dir).recipe_path
    if path.is_file():
        recipe = yaml.safe_load(path.read_text()) or {}
        untrusted_model_section(recipe.get("model") or {}, trust_remote_code, path)


def run_base_name(run_dir: str | Path) -> str | None:
    """The model name a run's recipe names (e.g. "demo:smollm2"), before resolution to a folder."""
    import yaml

    path = RunLayout(run_dir).recipe_path
    if not path.is_file():
        return None
    recipe = yaml.safe_load(path.read_text()) or {}
    return (recipe.get("model") or {}).get("name_or_path")


def _check_fields(options: dict[str, Any]) -> None:
    allowed = {f.name for f in dataclasses.fields(BaseModelConfig)} - {"name_or_path"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise LoraRlhfError(f"unknown base model option {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
