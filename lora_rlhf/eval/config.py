"""What `lora-rlhf eval` measures, on which prompts."""

from __future__ import annotations

import dataclasses

from lora_rlhf.data.sources import DatasetSpec
from lora_rlhf.errors import LoraRlhfError


@dataclasses.dataclass
class EvalConfig:
    """YAML section "eval"."""

    # Held-out prompts ({"prompt"} or {"messages"} rows), never seen in training.
    prompts: DatasetSpec = dataclasses.field(default_factory=DatasetSpec)
    # Evaluate on at most this many prompts.
    max_prompts: int = 64
    # Response budget per prompt.
    max_new_tokens: int = 48
    # Prompts per generation batch.
    batch_size: int = 8
    # 0 decodes greedily (deterministic comparisons); > 0 samples at this temperature.
    temperature: float = 0.0
    # Side-by-side examples shown in report.md.
    examples: int = 4
    # Random seed for sampling.
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("max_prompts", "max_new_tokens", "batch_size"):
            if getattr(self, key) < 1:
                raise LoraRlhfError(f"{key}: {getattr(self, key)!r} must be a positive integer")
        if self.temperature < 0:
            raise LoraRlhfError(f"temperature: {self.temperature!r} must be >= 0 (0 = greedy)")
        if self.examples < 0:
            raise LoraRlhfError(f"examples: {self.examples!r} must be >= 0")
