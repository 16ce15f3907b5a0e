"""The SFT stage's config (YAML section "sft")."""

from __future__ import annotations

import dataclasses

from lora_rlhf.data.rows import OnBadRow
from lora_rlhf.data.sources import DatasetSpec
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.models.lora import LoraSettings
from lora_rlhf.train.config import OptimConfig


def _sft_optim() -> OptimConfig:
    # InstructGPT §3.5 trained SFT for 16 epochs with cosine decay; a LoRA adapter needs a higher rate.
    return OptimConfig(learning_rate=2e-4, epochs=2, scheduler="cosine")


@dataclasses.dataclass
class SFTConfig:
    """Supervised fine-tuning of the `sft` adapter on demonstrations."""

    # Demonstrations: {prompt, completion} or {messages} rows.
    data: DatasetSpec = dataclasses.field(default_factory=DatasetSpec)
    # Fraction of the demonstrations held out for the eval loss (ignored when eval_data is given).
    eval_fraction: float = 0.05
    # Separate held-out demonstrations (optional).
    eval_data: DatasetSpec | None = None
    # Longest prompt + response in tokens; longer responses are cut (never to nothing).
    max_length: int = 512
    # Rows that cannot be used (missing fields, empty response, prompt too long): "error" or "skip" and count.
    on_bad_row: OnBadRow = "error"
    # The sft role's LoRA adapter.
    lora: LoraSettings = dataclasses.field(default_factory=LoraSettings)
    # Optimisation.
    train: OptimConfig = dataclasses.field(default_factory=_sft_optim)

    def __post_init__(self) -> None:
        if not 0 <= self.eval_fraction < 1:
            raise LoraRlhfError(f"eval_fraction: {self.eval_fraction!r} must be in [0, 1)")
        if self.max_length < 2:
            raise LoraRlhfError(f"max_length: {self.max_length!r} must be at least 2")
