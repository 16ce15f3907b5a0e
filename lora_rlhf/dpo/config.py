"""The DPO stage's config (YAML section "dpo")."""

from __future__ import annotations

import dataclasses

from lora_rlhf.data.rankings import Ties
from lora_rlhf.data.rows import OnBadRow
from lora_rlhf.data.sources import DatasetSpec
from lora_rlhf.dpo.loss import LossType
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.rm.config import RMConfig
from lora_rlhf.train.config import OptimConfig


def _dpo_optim() -> OptimConfig:
    # DPO's paper trained 1 epoch at 1e-6 (full fine-tuning); a LoRA adapter needs a higher rate, and DPO's
    # gradient is small near the start (σ(0) = 1/2 times the log-ratios' gradients), so warm up briefly.
    return OptimConfig(learning_rate=5e-5, epochs=1, batch_size=4, scheduler="cosine", warmup_ratio=0.1)


@dataclasses.dataclass
class DPOConfig:
    """Direct Preference Optimization of the `dpo` adapter (a copy of sft) against the frozen sft reference.

    The data keys left unset (empty path, null) are the reward model's: DPO trains on the rankings the RM does,
    read the same way (`rm.data`, `rm.eval_data`, `rm.max_length`, `rm.ties`, `rm.on_bad_row`).
    """

    # Run the stage in `lora-rlhf pipeline` (after ppo, before eval); `lora-rlhf dpo` runs it either way.
    enabled: bool = False
    # β of DPO eq. 7: how far the policy may move from the reference (the paper: 0.1; TRL's default too).
    beta: float = 0.1
    # "plackett_luce": the whole ranking's likelihood (DPO appendix A.3); "sigmoid": DPO eq. 7 on every untied
    # pair, averaged per prompt as the RM loss. The same loss when every prompt has K = 2.
    loss_type: LossType = "plackett_luce"
    # Rankings (empty path: rm.data).
    data: DatasetSpec = dataclasses.field(default_factory=DatasetSpec)
    # Separate held-out rankings (null: rm.eval_data when `data` is unset, else none).
    eval_data: DatasetSpec | None = None
    # Fraction of the prompts held out when there is no eval_data (null: rm.eval_fraction).
    eval_fraction: float | None = None
    # Longest prompt + response in tokens (null: rm.max_length).
    max_length: int | None = None
    # Tied ranks: "error" or "skip_pairs" (null: rm.ties); a tied pair is no comparison in either loss.
    ties: Ties | None = None
    # Rows that cannot be used: "error" or "skip" and count (null: rm.on_bad_row).
    on_bad_row: OnBadRow | None = None
    # Compute the reference's log-probs once for the whole dataset before training, cached in
    # checkpoints/dpo/reference_logps.safetensors (a rerun or resume reuses them while the data and sft are the
    # same): one forward per step instead of two. Off: the reference scores each batch as it comes.
    precompute_reference: bool = False
    # Optimisation (batch_size counts prompts, each with its K responses).
    train: OptimConfig = dataclasses.field(default_factory=_dpo_optim)

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise LoraRlhfError(f"beta: {self.beta!r} must be > 0")
        if self.eval_fraction is not None and not 0 <= self.eval_fraction < 1:
            raise LoraRlhfError(f"eval_fraction: {self.eval_fraction!r} must be in [0, 1)")
        if self.max_length is not None and (isinstance(self.max_length, bool) or self.max_length < 2):
            raise LoraRlhfError(f"max_length: {self.max_length!r} must be at least 2 or null")

    def resolved(self, rm: RMConfig | None = None) -> DPOConfig:
        """This config with every unset data key taken from `rm` (default: RMConfig()'s), as the stage reads it."""
        rm = rm if rm is not None else RMConfig()
        own_data = bool(self.data.path)

        def pick(value, fallback):
            return value if value is not None else fallback

        return dataclasses.replace(
            self,
            data=self.data if own_data else rm.data,
            eval_data=self.eval_data if own_data or self.eval_data is not None else rm.eval_data,
            eval_fraction=pick(self.eval_fraction, rm.eval_fraction),
            max_length=pick(self.max_length, rm.max_length),
            ties=pick(self.ties, rm.ties),
            on_bad_row=pick(self.on_bad_row, rm.on_bad_row),
        )
