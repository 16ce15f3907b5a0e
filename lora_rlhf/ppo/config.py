"""The PPO stage's config (YAML section "ppo"): InstructGPT §3.5 / Appendix C.4, adapted to LoRA.

Where a default differs from the paper it says so and why.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from lora_rlhf.data.rows import OnBadRow
from lora_rlhf.data.sources import DatasetSpec
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.train.config import MixedPrecision

KLControl = Literal["fixed", "adaptive"]
KLEstimator = Literal["k1", "k3"]
PPOScheduler = Literal["constant", "constant_with_warmup", "linear", "cosine"]


@dataclasses.dataclass
class PPOConfig:
    """PPO-ptx on the `policy` and `value` roles against the frozen `reward` role, KL-anchored to `sft`."""

    # Prompts to roll out on: {"prompt"} or {"messages"} rows.
    prompts: DatasetSpec = dataclasses.field(default_factory=DatasetSpec)
    # PPO iterations (one rollout of `rollout_batch_size` prompts + its optimisation each).
    steps: int = 100
    # Prompts per rollout (paper: 512). Small by default: LoRA on one GPU, not 256 A100s.
    rollout_batch_size: int = 32
    # Sequences per optimizer step (paper: 64).
    mini_batch_size: int = 8
    # Sequences per forward/backward pass; mini_batch_size must be a multiple (gradient accumulation).
    micro_batch_size: int = 4
    # Passes over each rollout (paper: 1 epoch of PPO per batch).
    ppo_epochs: int = 1

    # --- rollout
    # Response budget in tokens; generation stops earlier at EOS.
    max_new_tokens: int = 64
    # Prompts longer than this (in tokens, chat template included) are bad rows.
    max_prompt_length: int = 256
    # Sampling temperature of the policy; log-probs are computed at the same temperature.
    temperature: float = 1.0
    # Nucleus sampling (1.0 = off).
    top_p: float = 1.0
    # Top-k sampling (0 = off).
    top_k: int = 0
    # Unusable prompt rows: "error", or "skip" and count them.
    on_bad_row: OnBadRow = "error"

    # --- rewards and advantages (InstructGPT eq. 2)
    # Initial KL coefficient beta (paper: 0.02).
    kl_coef: float = 0.02
    # "fixed" beta, or "adaptive" (Ziegler et al. 2019 §2.2) steering the KL toward kl_target.
    kl_control: KLControl = "fixed"
    # Target of the adaptive controller, in nats per sequence.
    kl_target: float = 6.0
    # Horizon of the adaptive controller, in sequences (Ziegler et al.: 10000).
    kl_horizon: int = 10000
    # Per-token KL estimate in the reward: "k1" (log pi - log pi_ref, the paper's) or "k3" (always >= 0).
    kl_estimator: KLEstimator = "k1"
    # Stop the run if the mean sequence KL exceeds this (null: no ceiling).
    kl_ceiling: float | None = None
    # Clip the RM score to [-score_clip, score_clip] (null: no clipping).
    score_clip: float | None = None
    # Subtract this from the score of a response cut at max_new_tokens (TRL's missing_eos_penalty): the RM
    # only ever saw responses ending in EOS, so its score of a truncated one is out of distribution (null: off).
    missing_eos_penalty: float | None = None
    # Normalise RM scores by their running mean and std before use.
    score_normalize: bool = False
    # Discount (paper: 1, the episode is one response).
    gamma: float = 1.0
    # GAE lambda (Schulman et al. 2016; the common 0.95).
    lam: float = 0.95
    # Whiten advantages over valid tokens of the rollout.
    whiten_advantages: bool = True

    # --- optimisation
    # Policy LR. Paper: 9.65e-6 (1.3B) for full fine-tuning; LoRA updates few weights and needs ~10x more.
    policy_learning_rate: float = 5e-5
    # Value LR (the paper uses a different rate for the value function); the value head starts from the RM.
    value_learning_rate: float = 1e-4
    # Adam betas (paper: 0.9, 0.95).
    adam_betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.95])
    # AdamW weight decay.
    weight_decay: float = 0.0
    # Learning-rate schedule over `steps` iterations (paper: constant after warmup).
    scheduler: PPOScheduler = "constant_with_warmup"
    # Iterations spent warming both learning rates up (paper: 10).
    warmup_steps: int = 0
    # Surrogate clip epsilon (paper: 0.2).
    clip_range: float = 0.2
    # Value clip epsilon (clipped value loss).
    clip_range_value: float = 0.2
    # Clip each role's gradient norm to this (0 disables).
    max_grad_norm: float = 1.0

    # --- PPO-ptx (InstructGPT eq. 2, second term)
    # Pretraining-style text ({"text"} rows, loss on every token) or demonstrations ({prompt, completion} or
    # {messages}, loss on the completion); empty path: no ptx term.
    ptx: DatasetSpec = dataclasses.field(default_factory=DatasetSpec)
    # gamma_ptx (paper: 27.8); 0 turns the term off (plain "PPO" in the paper's figures).
    ptx_coef: float = 27.8
    # Longest ptx example in tokens.
    ptx_max_length: int = 256
    # ptx examples per micro-batch.
    ptx_batch_size: int = 4

    # --- roles
    # Value role init: a copy of the reward role, head included (the paper), or a fresh adapter and head.
    value_init: Literal["reward", "fresh"] = "reward"

    # --- bookkeeping
    # Log every N iterations.
    logging_steps: int = 1
    # Save a resumable checkpoint every N iterations (and at the end).
    save_steps: int = 25
    # Checkpoints kept on disk.
    keep_checkpoints: int = 2
    # Seed of prompt order, sampling and minibatch shuffling.
    seed: int = 0
    # Autocast on accelerators ("auto": bf16 where supported; off on the CPU).
    mixed_precision: MixedPrecision = "auto"

    def __post_init__(self) -> None:
        positive = ("steps", "rollout_batch_size", "mini_batch_size", "micro_batch_size", "ppo_epochs", "max_new_tokens",
                    "max_prompt_length", "kl_horizon", "ptx_max_length", "ptx_batch_size", "logging_steps",
                    "save_steps", "keep_checkpoints")
        for key in positive:
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise LoraRlhfError(f"{key}: {getattr(self, key)!r} must be a positive integer")
        if self.rollout_batch_size % self.mini_batch_size:
            raise LoraRlhfError(f"rollout_batch_size: {self.rollout_batch_size} must be a multiple of mini_batch_size ({self.mini_batch_size})")
        if self.mini_batch_size % self.micro_batch_size:
            raise LoraRlhfError(f"mini_batch_size: {self.mini_batch_size} must be a multiple of micro_batch_size ({self.micro_batch_size})")
        self._check_ranges()

    def _check_ranges(self) -> None:
        checks = [
            ("temperature", self.temperature > 0, "must be > 0"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("top_k", self.top_k >= 0, "must be >= 0"),
            ("kl_coef", self.kl_coef >= 0, "must be >= 0"),
            ("kl_target", self.kl_target > 0, "must be > 0"),
            ("kl_ceiling", self.kl_ceiling is None or self.kl_ceiling > 0, "must be > 0 or null"),
            ("score_clip", self.score_clip is None or self.score_clip > 0, "must be > 0 or null"),
            ("missing_eos_penalty", self.missing_eos_penalty is None or self.missing_eos_penalty >= 0, "must be >= 0 or null"),
            ("gamma", 0 <= self.gamma <= 1, "must be in [0, 1]"),
            ("lam", 0 <= self.lam <= 1, "must be in [0, 1]"),
            ("policy_learning_rate", self.policy_learning_rate > 0, "must be > 0"),
            ("value_learning_rate", self.value_learning_rate > 0, "must be > 0"),
            ("adam_betas", len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas), "must be two numbers in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("warmup_steps", self.warmup_steps >= 0, "must be >= 0"),
            ("clip_range", 0 < self.clip_range < 1, "must be in (0, 1)"),
            ("clip_range_value", self.clip_range_value > 0, "must be > 0"),
            ("max_grad_norm", self.max_grad_norm >= 0, "must be >= 0"),
            ("ptx_coef", self.ptx_coef >= 0, "must be >= 0 (0 turns PPO-ptx off)"),
        ]
        for key, ok, rule in checks:
            if not ok:
                raise LoraRlhfError(f"{key}: {getattr(self, key)!r} {rule}")

    @property
    def uses_ptx(self) -> bool:
        return self.ptx_coef > 0 and bool(self.ptx.path)
