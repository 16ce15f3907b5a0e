"""The reward-model stage's config (YAML section "rm")."""

from __future__ import annotations

import dataclasses
from typing import Literal

from lora_rlhf.data.rankings import Ties
from lora_rlhf.data.rows import OnBadRow
from lora_rlhf.data.sources import DatasetSpec
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.models.lora import LoraSettings
from lora_rlhf.train.config import OptimConfig
from lora_rlhf.validation import check_positive_ints


def _rm_optim() -> OptimConfig:
    # InstructGPT trained the RM for a single epoch: more overfits the comparisons (§3.5).
    return OptimConfig(learning_rate=1e-4, epochs=1, batch_size=4, scheduler="cosine")


@dataclasses.dataclass
class RMConfig:
    """The reward model: the `reward` adapter and its scalar head, trained on rankings."""

    # Rankings: {prompt, responses, ranks}, {prompt, chosen, rejected} or hh-rlhf {chosen, rejected} rows.
    data: DatasetSpec = dataclasses.field(default_factory=DatasetSpec)
    # Fraction of the prompts held out for accuracy (ignored when eval_data is given).
    eval_fraction: float = 0.1
    # Separate held-out rankings (optional).
    eval_data: DatasetSpec | None = None
    # Start the reward adapter as a copy of sft (InstructGPT starts the RM from the SFT model) or fresh.
    init: Literal["sft", "fresh"] = "sft"
    # Longest prompt + response in tokens.
    max_length: int = 512
    # Tied ranks: "error", or "skip_pairs" to train on the untied pairs only.
    ties: Ties = "error"
    # Rows that cannot be used: "error" or "skip" and count.
    on_bad_row: OnBadRow = "error"
    # Demonstrations whose mean reward is set to 0 after training (InstructGPT §3.5); empty path: skip.
    demonstrations: DatasetSpec = dataclasses.field(default_factory=DatasetSpec)
    # At most this many demonstrations are scored for that bias.
    bias_examples: int = 256
    # The reward role's LoRA adapter (init "fresh" only; a copy of sft keeps sft's settings).
    lora: LoraSettings = dataclasses.field(default_factory=LoraSettings)
    # Learning rate of the scalar head (null: 10 x train.learning_rate). The head starts at zero and the
    # adapter's gradient is proportional to the head's weights, so a head stuck near zero also stalls the
    # adapter: on the demo, 16 steps at the adapter's rate left the margin at 0.01 and the loss at 0.69.
    head_learning_rate: float | None = None
    # Encode each ranking's prompt once and its K responses on its KV cache (same scores, fewer tokens: the
    # demo's prompts are ~4x longer than its responses, so K = 8 costs ~3x less). Off, or under gradient
    # checkpointing (which turns the cache off in training), every prompt + response is encoded in full.
    share_prompts: bool = True
    # Optimisation (batch_size counts prompts, each with its K responses).
    train: OptimConfig = dataclasses.field(default_factory=_rm_optim)

    @property
    def resolved_head_learning_rate(self) -> float:
        return self.head_learning_rate if self.head_learning_rate is not None else 10 * self.train.learning_rate

    def __post_init__(self) -> None:
        if not 0 <= self.eval_fraction < 1:
            raise LoraRlhfError(f"eval_fraction: {self.eval_fraction!r} must be in [0, 1)")
        if self.max_length < 2:
            raise LoraRlhfError(f"max_length: {self.max_length!r} must be at least 2")
        if self.head_learning_rate is not None and not self.head_learning_rate > 0:
            raise LoraRlhfError(f"head_learning_rate: {self.head_learning_rate!r} must be > 0 or null")
        check_positive_ints(self, ("bias_examples",))
