"""Recipes: nested dataclass configs built from YAML and dotted overrides."""

from lora_rlhf.config.loader import build, merge, parse_overrides, to_dict

__all__ = ["build", "merge", "parse_overrides", "to_dict"]
