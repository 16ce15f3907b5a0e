"""Optimisation settings: what every role's AdamW shares (AdamWConfig), and the SFT and RM training loop's
(OptimConfig).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.validation import check_positive_ints

Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup"]
# No "fp16": it needs a loss scaler whose unscaling before clipping requires optimizers prepared by
# Accelerate, which the role-switching loops do not do; bf16 needs no scaler.
MixedPrecision = Literal["auto", "no", "bf16"]


@dataclasses.dataclass
class AdamWConfig:
    """What every AdamW step of a role shares: decay, betas, gradient clipping and autocast.

    The base of `sft.train` / `rm.train` (OptimConfig) and of `ppo.optim` (ppo/config.py).
    """

    # AdamW weight decay.
    weight_decay: float = 0.0
    # Adam betas; InstructGPT used (0.9, 0.95).
    adam_betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.95])
    # Clip the gradient norm to this (0 disables).
    max_grad_norm: float = 1.0
    # Autocast dtype on accelerators; "auto": bf16 where supported, else off (always off on the CPU).
    mixed_precision: MixedPrecision = "auto"

    def __post_init__(self) -> None:
        if self.weight_decay < 0:
            raise LoraRlhfError(f"weight_decay: {self.weight_decay!r} must be >= 0")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise LoraRlhfError(f"adam_betas: {self.adam_betas!r} must be two numbers in [0, 1)")
        if self.max_grad_norm < 0:
            raise LoraRlhfError(f"max_grad_norm: {self.max_grad_norm!r} must be >= 0")


@dataclasses.dataclass
class OptimConfig(AdamWConfig):
    """How one role is trained (a section `train` inside `sft` and `rm`)."""

    # Peak learning rate of AdamW on the LoRA matrices (and head).
    learning_rate: float = 2e-4
    # Passes over the training set (InstructGPT: 16 for SFT, 1 for the RM to avoid overfitting).
    epochs: int = 1
    # Stop after this many optimizer steps (None: run every epoch).
    max_steps: int | None = None
    # Examples per micro-batch (for the RM: prompts, each with its K responses).
    batch_size: int = 8
    # Micro-batches per optimizer step.
    gradient_accumulation: int = 1
    # Learning-rate schedule after warmup (transformers.get_scheduler).
    scheduler: Scheduler = "cosine"
    # Fraction of the steps spent warming the learning rate up from 0.
    warmup_ratio: float = 0.05
    # Log training figures every N optimizer steps.
    logging_steps: int = 5
    # Evaluate on the held-out split every N optimizer steps (and at the end).
    eval_steps: int = 50
    # Save a resumable checkpoint every N optimizer steps (and at the end).
    save_steps: int = 50
    # Checkpoints kept on disk (the newest ones).
    keep_checkpoints: int = 2
    # Seed of the data order and dropout.
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_ints(
            self,
            (
                "epochs",
                "batch_size",
                "gradient_accumulation",
                "logging_steps",
                "eval_steps",
                "save_steps",
                "keep_checkpoints",
            ),
        )
        check_positive_ints(self, ("max_steps",), nullable=True)
        if self.learning_rate <= 0:
            raise LoraRlhfError(f"learning_rate: {self.learning_rate!r} must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise LoraRlhfError(f"warmup_ratio: {self.warmup_ratio!r} must be in [0, 1)")
        super().__post_init__()
