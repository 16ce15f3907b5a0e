"""Per-role LoRA settings (Hu et al. 2021), validated on construction."""

from __future__ import annotations

import dataclasses

from lora_rlhf.errors import LoraRlhfError


@dataclasses.dataclass
class LoraSettings:
    """The LoRA adapter of one role."""

    # Rank of the update BA; QLoRA used 64 for 7B models, 8-16 is plenty for RLHF adapters.
    r: int = 16
    # Scale of the update is alpha / r.
    alpha: int = 32
    # Dropout on the adapter's input (training only).
    dropout: float = 0.05
    # Module names to adapt, or "all-linear" (PEFT: every linear layer but the output head, as QLoRA does).
    target_modules: list[str] | str = "all-linear"

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r < 1:
            raise LoraRlhfError(f"r: {self.r!r} is not a positive integer")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise LoraRlhfError(f"alpha: {self.alpha!r} is not a positive number")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise LoraRlhfError(f"dropout: {self.dropout!r} is not in [0, 1)")
        targets = self.target_modules
        if isinstance(targets, str):
            if not targets:
                raise LoraRlhfError("target_modules is empty: give module names or 'all-linear'")
        elif not targets or not all(isinstance(t, str) and t for t in targets):
            raise LoraRlhfError(f"target_modules: {targets!r} is not a non-empty list of module names")

    def to_peft(self):
        from peft import LoraConfig

        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=float(self.dropout),
            target_modules=targets,
            bias="none",
            task_type="CAUSAL_LM",
        )
