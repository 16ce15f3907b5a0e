"""A recipe: the whole run's config, one section per stage, as YAML (recipes/*.yaml) or dataclasses.

    model:  the one base (BaseModelConfig)
    demo:   the embedded instruction-following task and its programmatic labeler (off for real data)
    sft / rm / ppo / dpo / eval:  the stages' own configs (dpo runs in the pipeline only when dpo.enabled)

`lora-rlhf pipeline` with no arguments runs recipes/demo.yaml, shipped inside the package.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from lora_rlhf.config.loader import build, merge, parse_overrides, to_dict
from lora_rlhf.demo.config import DemoConfig
from lora_rlhf.dpo.config import DPOConfig
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.eval.config import EvalConfig
from lora_rlhf.models.base import BaseModelConfig
from lora_rlhf.ppo.config import PPOConfig
from lora_rlhf.rm.config import RMConfig
from lora_rlhf.sft.config import SFTConfig
from lora_rlhf.tracking import check_report_to

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
DEFAULT_RECIPE = RECIPES / "demo.yaml"


@dataclasses.dataclass
class RecipeConfig:
    """The whole run."""

    model: BaseModelConfig = dataclasses.field(default_factory=BaseModelConfig)
    demo: DemoConfig = dataclasses.field(default_factory=DemoConfig)
    sft: SFTConfig = dataclasses.field(default_factory=SFTConfig)
    rm: RMConfig = dataclasses.field(default_factory=RMConfig)
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    # DPO on the same rankings as the RM, its unset data keys the rm section's (lora_rlhf/dpo, docs/dpo.md).
    dpo: DPOConfig = dataclasses.field(default_factory=DPOConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    # Experiment trackers that also receive every metrics row, on the main process (accelerate's: tensorboard,
    # wandb, trackio, mlflow, ...; lora_rlhf.tracking). Empty: metrics/*.jsonl only.
    report_to: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        check_report_to(self.report_to)
        if self.demo.enabled and self.demo.ties and self.rm.ties != "skip_pairs":
            raise LoraRlhfError(
                f"demo.ties: true writes tied ranks, which rm.ties: {self.rm.ties!r} refuses (set rm.ties: skip_pairs)"
            )
        if self.demo.enabled and self.demo.ties and self.dpo.enabled and self.dpo.ties == "error":
            raise LoraRlhfError(
                "demo.ties: true writes tied ranks, which dpo.ties: 'error' refuses (set dpo.ties: null)"
            )

    @property
    def resolved_dpo(self) -> DPOConfig:
        """The dpo section with its unset data keys taken from the rm section (DPO trains on the RM's rankings)."""
        return self.dpo.resolved(self.rm)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A recipe file as a mapping, with one-line errors for a missing file or bad YAML."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise LoraRlhfError(f"recipe {str(path)!r} is a directory, not a YAML file")
    if not path.is_file():
        raise LoraRlhfError(f"recipe {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raw = path.read_bytes()
        line = raw[: exc.start].count(b"\n") + 1
        bad = raw[exc.start : exc.start + 1]
        raise LoraRlhfError(f"recipe {path}, line {line}: byte {bad!r} is not UTF-8 (save the file as UTF-8)") from None
    except yaml.YAMLError as exc:
        raise LoraRlhfError(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    except OSError as exc:
        raise LoraRlhfError(f"recipe {path}: {exc.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LoraRlhfError(f"recipe {path} must be a mapping of sections (model, sft, rm, ppo, eval, ...)")
    return data


def load_recipe(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RecipeConfig:
    """Build and validate a recipe from a YAML file (default: the embedded demo) and dotted overrides."""
    data = read_yaml(path or DEFAULT_RECIPE)
    try:
        return build(RecipeConfig, merge(data, parse_overrides(overrides)))
    except LoraRlhfError as exc:
        where = str(path or "the default recipe") + (" with overrides" if overrides else "")
        raise LoraRlhfError(f"{exc} (in {where})") from None
