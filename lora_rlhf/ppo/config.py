"""The PPO stage's config (YAML section "ppo"): InstructGPT §3.5 / Appendix C.4, adapted to LoRA.

    ppo:
      prompts, max_prompt_length, on_bad_row       what to roll out on
      steps, rollout_batch_size, mini_batch_size,  batch geometry
        micro_batch_size, ppo_epochs
      advantage                                    gae (value role, the paper) or critic-free rloo / grpo
      value_init                                   how the value role starts (gae only)
      sampling:  SamplingConfig                    how rollouts sample from the policy
      rewards:   RewardsConfig                     eq. 2's reward (KL penalty, its β, score shaping) and GAE
      optim:     PPOOptimConfig                    AdamW per role, schedule, clip ranges
      ptx:       PtxConfig                         the PPO-ptx term
      logging_steps, save_steps, keep_checkpoints, seed

Every section is validated on construction; the loader names a bad value by its full key
(`ppo.sampling.temperature: -1.0 must be > 0`). Where a default differs from the paper it says so and why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

from lora_rlhf.data.rows import OnBadRow
from lora_rlhf.data.sources import DatasetSpec
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.train.config import AdamWConfig, Scheduler
from lora_rlhf.validation import check_positive_ints

KLControl = Literal["fixed", "adaptive"]
KLEstimator = Literal["k1", "k3"]
ScoreBaseline = Literal["none", "prompt_mean"]
# How a sample's advantage is estimated (issue 27, docs/critic_free.md): "gae" from a trained value role (the
# paper); "rloo" and "grpo" from the other samples of the same prompt, with no value role at all.
AdvantageEstimator = Literal["gae", "rloo", "grpo"]
CRITIC_FREE = ("rloo", "grpo")


def _check_rules(config: Any, rules: Iterable[tuple[str, bool, str]]) -> None:
    """(key, holds, rule) triples -> a one-line error "key: value rule" for the first that does not hold."""
    for key, holds, rule in rules:
        if not holds:
            raise LoraRlhfError(f"{key}: {getattr(config, key)!r} {rule}")


@dataclasses.dataclass
class SamplingConfig:
    """How rollouts sample from `policy` (ppo.sampling); log-probs are read at the same temperature."""

    # Response budget in tokens; generation stops earlier at EOS.
    max_new_tokens: int = 64
    # Sampling temperature of the policy; log-probs are computed at the same temperature.
    temperature: float = 1.0
    # Nucleus sampling (1.0 = off).
    top_p: float = 1.0
    # Top-k sampling (0 = off).
    top_k: int = 0
    # Take the sampling policy's log-probs and entropy from the generation pass (one forward fewer per rollout);
    # false recomputes them with a forward over prompt + response (for a model whose cached decoding differs).
    logprobs_from_generation: bool = True

    def __post_init__(self) -> None:
        check_positive_ints(self, ("max_new_tokens",))
        _check_rules(
            self,
            [
                ("temperature", self.temperature > 0, "must be > 0"),
                ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
                ("top_k", self.top_k >= 0, "must be >= 0"),
            ],
        )


@dataclasses.dataclass
class RewardsConfig:
    """The per-token reward of InstructGPT eq. 2 (RM score shaped, minus β·KL) and its advantages (ppo.rewards)."""

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
    # "prompt_mean": subtract from each response's score the mean score of the other responses to the same
    # prompt (the leave-one-out baseline of RLOO, Kool et al. 2019, Ahmadian et al. 2024), so a response is
    # rewarded for beating its siblings rather than for drawing an easy prompt. Needs ppo.samples_per_prompt
    # >= 2. "none": the paper's raw score, whose per-prompt level only the value function can absorb.
    score_baseline: ScoreBaseline = "none"
    # Discount (paper: 1, the episode is one response).
    gamma: float = 1.0
    # GAE lambda (Schulman et al. 2016; the common 0.95).
    lam: float = 0.95
    # Whiten advantages over valid tokens of the rollout. null: true for gae and rloo, false for grpo, whose
    # advantages are already normalised within each prompt's group (Shao et al. 2024 §4.1.2).
    whiten_advantages: bool | None = None

    def __post_init__(self) -> None:
        check_positive_ints(self, ("kl_horizon",))
        _check_rules(
            self,
            [
                ("kl_coef", self.kl_coef >= 0, "must be >= 0"),
                ("kl_target", self.kl_target > 0, "must be > 0"),
                ("kl_ceiling", self.kl_ceiling is None or self.kl_ceiling > 0, "must be > 0 or null"),
                ("score_clip", self.score_clip is None or self.score_clip > 0, "must be > 0 or null"),
                (
                    "missing_eos_penalty",
                    self.missing_eos_penalty is None or self.missing_eos_penalty >= 0,
                    "must be >= 0 or null",
                ),
                ("gamma", 0 <= self.gamma <= 1, "must be in [0, 1]"),
                ("lam", 0 <= self.lam <= 1, "must be in [0, 1]"),
            ],
        )


@dataclasses.dataclass
class PPOOptimConfig(AdamWConfig):
    """The policy's and the value's AdamW (ppo.optim): weight_decay, adam_betas, max_grad_norm (each role's
    clipped separately) and mixed_precision as in sft.train, plus a rate per role and PPO's clip ranges."""

    # Policy LR. Paper: 9.65e-6 (1.3B) for full fine-tuning; LoRA updates few weights and needs ~10x more.
    policy_learning_rate: float = 5e-5
    # Value LR (the paper uses a different rate for the value function); the value head starts from the RM.
    value_learning_rate: float = 1e-4
    # Learning-rate schedule over `ppo.steps` iterations (paper: constant after warmup).
    scheduler: Scheduler = "constant_with_warmup"
    # Iterations spent warming both learning rates up (paper: 10).
    warmup_steps: int = 0
    # Surrogate clip epsilon (paper: 0.2).
    clip_range: float = 0.2
    # Value clip epsilon (clipped value loss).
    clip_range_value: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_rules(
            self,
            [
                ("policy_learning_rate", self.policy_learning_rate > 0, "must be > 0"),
                ("value_learning_rate", self.value_learning_rate > 0, "must be > 0"),
                ("warmup_steps", self.warmup_steps >= 0, "must be >= 0"),
                ("clip_range", 0 < self.clip_range < 1, "must be in (0, 1)"),
                ("clip_range_value", self.clip_range_value > 0, "must be > 0"),
            ],
        )


@dataclasses.dataclass
class PtxConfig:
    """PPO-ptx (InstructGPT eq. 2, second term; ppo.ptx): gamma_ptx times an LM loss mixed into every minibatch."""

    # Pretraining-style text ({"text"} rows, loss on every token) or demonstrations ({prompt, completion} or
    # {messages}, loss on the completion); empty path: no ptx term.
    data: DatasetSpec = dataclasses.field(default_factory=DatasetSpec)
    # gamma_ptx (paper: 27.8); 0 turns the term off (plain "PPO" in the paper's figures).
    coef: float = 27.8
    # Longest ptx example in tokens.
    max_length: int = 256
    # ptx examples per micro-batch.
    batch_size: int = 4

    def __post_init__(self) -> None:
        check_positive_ints(self, ("max_length", "batch_size"))
        _check_rules(self, [("coef", self.coef >= 0, "must be >= 0 (0 turns PPO-ptx off)")])

    @property
    def enabled(self) -> bool:
        return self.coef > 0 and bool(self.data.path)


_MOVED_INTO = {
    "sampling": ("max_new_tokens", "temperature", "top_p", "top_k"),
    "rewards": (
        "kl_coef",
        "kl_control",
        "kl_target",
        "kl_horizon",
        "kl_estimator",
        "kl_ceiling",
        "score_clip",
        "missing_eos_penalty",
        "score_normalize",
        "score_baseline",
        "gamma",
        "lam",
        "whiten_advantages",
    ),
    "optim": (
        "policy_learning_rate",
        "value_learning_rate",
        "adam_betas",
        "weight_decay",
        "scheduler",
        "warmup_steps",
        "clip_range",
        "clip_range_value",
        "max_grad_norm",
        "mixed_precision",
    ),
}
# Issue 11 nested the flat keys of older recipes in sections: the loader answers an old key with its new one
# ("ppo.kl_coef moved to ppo.rewards.kl_coef"), in a YAML file and in an override alike.
MOVED_KEYS: dict[str, str] = {
    **{old: f"{section}.{old}" for section, olds in _MOVED_INTO.items() for old in olds},
    "ptx_coef": "ptx.coef",
    "ptx_max_length": "ptx.max_length",
    "ptx_batch_size": "ptx.batch_size",
    **{f"ptx.{key.name}": f"ptx.data.{key.name}" for key in dataclasses.fields(DatasetSpec)},
}


@dataclasses.dataclass
class PPOConfig:
    """PPO-ptx on the `policy` and `value` roles against the frozen `reward` role, KL-anchored to `sft`."""

    # Old flat keys -> their place in the sections (read by config/loader.py).
    moved_keys: ClassVar[dict[str, str]] = MOVED_KEYS

    # Prompts to roll out on: {"prompt"} or {"messages"} rows.
    prompts: DatasetSpec = dataclasses.field(default_factory=DatasetSpec)
    # PPO iterations (one rollout of `rollout_batch_size` prompts + its optimisation each).
    steps: int = 100
    # Prompts per rollout (paper: 512). Small by default: LoRA on one GPU, not 256 A100s.
    rollout_batch_size: int = 32
    # Responses sampled per prompt (paper: 1). A rollout holds rollout_batch_size x samples_per_prompt
    # sequences; generation encodes each prompt once for all its samples, and rewards.score_baseline
    # "prompt_mean" compares them with each other.
    samples_per_prompt: int = 1
    # Sequences per optimizer step (paper: 64).
    mini_batch_size: int = 8
    # Sequences per forward/backward pass; mini_batch_size must be a multiple (gradient accumulation).
    micro_batch_size: int = 4
    # Passes over each rollout (paper: 1 epoch of PPO per batch).
    ppo_epochs: int = 1
    # Prompts longer than this (in tokens, chat template included) are bad rows.
    max_prompt_length: int = 256
    # Unusable prompt rows: "error", or "skip" and count them.
    on_bad_row: OnBadRow = "error"
    # "gae": advantages from a trained value role by GAE (the paper). "rloo" (Ahmadian et al. 2024) and "grpo"
    # (Shao et al. 2024): critic-free, each sample's advantage from the other samples of its prompt, so there is no
    # value adapter, no value pass and no value optimizer (docs/critic_free.md). Both need samples_per_prompt >= 2.
    advantage: AdvantageEstimator = "gae"
    # Value role init (gae only): a copy of the reward role, head included (the paper), or a fresh adapter and head.
    value_init: Literal["reward", "fresh"] = "reward"

    # How rollouts sample (ppo.sampling).
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    # The KL-penalised reward, its beta controller, score shaping and GAE (ppo.rewards).
    rewards: RewardsConfig = dataclasses.field(default_factory=RewardsConfig)
    # Both roles' AdamW, schedule and clip ranges (ppo.optim).
    optim: PPOOptimConfig = dataclasses.field(default_factory=PPOOptimConfig)
    # The PPO-ptx term (ppo.ptx).
    ptx: PtxConfig = dataclasses.field(default_factory=PtxConfig)

    # --- bookkeeping
    # Log every N iterations.
    logging_steps: int = 1
    # Save a resumable checkpoint every N iterations (and at the end).
    save_steps: int = 25
    # Checkpoints kept on disk.
    keep_checkpoints: int = 2
    # Seed of prompt order, sampling and minibatch shuffling.
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_ints(
            self,
            (
                "steps",
                "rollout_batch_size",
                "samples_per_prompt",
                "mini_batch_size",
                "micro_batch_size",
                "ppo_epochs",
                "max_prompt_length",
                "logging_steps",
                "save_steps",
                "keep_checkpoints",
            ),
        )
        if self.rollout_sequences % self.mini_batch_size:
            samples = f" x samples_per_prompt {self.samples_per_prompt}" if self.samples_per_prompt > 1 else ""
            raise LoraRlhfError(
                f"rollout_batch_size: {self.rollout_batch_size}{samples} "
                f"must be a multiple of mini_batch_size ({self.mini_batch_size})"
            )
        self._check_advantage()
        if self.rewards.score_baseline == "prompt_mean" and self.samples_per_prompt < 2:
            raise LoraRlhfError(
                f"samples_per_prompt: {self.samples_per_prompt} must be >= 2 with rewards.score_baseline "
                "'prompt_mean', which compares a prompt's samples with each other"
            )
        if self.mini_batch_size % self.micro_batch_size:
            raise LoraRlhfError(
                f"mini_batch_size: {self.mini_batch_size} "
                f"must be a multiple of micro_batch_size ({self.micro_batch_size})"
            )

    def _check_advantage(self) -> None:
        """Refuse what a critic-free estimator cannot honour; resolve whiten_advantages' null by the estimator."""
        rewards = self.rewards
        if rewards.whiten_advantages is None:
            rewards.whiten_advantages = self.advantage != "grpo"
        if not self.critic_free:
            return
        why = f"with advantage {self.advantage!r}"
        if self.samples_per_prompt < 2:
            raise LoraRlhfError(
                f"samples_per_prompt: {self.samples_per_prompt} must be >= 2 {why}, which compares a prompt's "
                "samples with each other"
            )
        if rewards.score_baseline != "none":
            raise LoraRlhfError(
                f"ppo.rewards.score_baseline: {rewards.score_baseline!r} must be 'none' {why}, which already takes "
                "each sample's baseline from its prompt's other samples"
            )
        if rewards.gamma != 1.0:
            raise LoraRlhfError(
                f"ppo.rewards.gamma: {rewards.gamma!r} must be 1.0 {why}: a sample's return is the undiscounted sum "
                "of its rewards (there is no value function to discount toward)"
            )

    @property
    def critic_free(self) -> bool:
        """No value role: advantages from the other samples of each prompt (rloo, grpo)."""
        return self.advantage in CRITIC_FREE

    @property
    def trained_roles(self) -> tuple[str, ...]:
        """The roles this stage trains, checkpoints and writes: policy, and value unless critic-free."""
        return ("policy",) if self.critic_free else ("policy", "value")

    @property
    def rollout_sequences(self) -> int:
        """Sequences per rollout: every prompt's samples."""
        return self.rollout_batch_size * self.samples_per_prompt
