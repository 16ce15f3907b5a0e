"""What `lora-rlhf eval` measures, on which prompts."""

from __future__ import annotations

import dataclasses

from lora_rlhf.data.sources import DatasetSpec
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.validation import check_positive_ints


@dataclasses.dataclass
class IFEvalConfig:
    """YAML section "eval.ifeval"; `lora-rlhf eval --run DIR --benchmark ifeval` turns it on for one call."""

    # Run the benchmark as part of eval: every model of the run answers IFEval's 541 prompts.
    enabled: bool = False
    # IFEval rows (key, prompt, instruction_id_list, kwargs); empty = the 541 prompts shipped with the package.
    path: str = ""
    # Answer only the first this many prompts (null: all 541). A subset is not comparable to published figures.
    max_prompts: int | None = None
    # Response budget (greedy). The leaderboard lets answers run long; on 2 CPU cores each model's 541 answers
    # cost ~2 s per 16 tokens of budget, and most of SmolLM2-135M's answers stop well before 384 tokens.
    max_new_tokens: int = 384
    # Prompts per decoding call (a row leaves the batch at its stop).
    batch_size: int = 64
    # A system turn put before every prompt; null = the chat template's own default (as lm-eval and lighteval
    # render IFEval prompts: one user turn through the model's chat template).
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        check_positive_ints(self, ("max_new_tokens", "batch_size"))
        check_positive_ints(self, ("max_prompts",), nullable=True)


@dataclasses.dataclass
class EvalConfig:
    """YAML section "eval"."""

    # Held-out prompts ({"prompt"} or {"messages"} rows), never seen in training.
    prompts: DatasetSpec = dataclasses.field(default_factory=DatasetSpec)
    # Evaluate on at most this many prompts.
    max_prompts: int = 64
    # Response budget per prompt.
    max_new_tokens: int = 48
    # Prompts per generation batch (each with its samples), and rows per batch of RM scoring and KL.
    batch_size: int = 8
    # 0 decodes greedily (deterministic comparisons); > 0 samples at this temperature.
    temperature: float = 0.0
    # Samples per prompt and model when sampling (temperature > 0). A model's score on a prompt is then the mean
    # over its samples, and a win is judged on those means: more samples narrow the paired intervals at the cost
    # of one more batched generate row per prompt and sample.
    samples_per_prompt: int = 1
    # Side-by-side examples shown in report.md.
    examples: int = 4
    # Random seed for sampling and for the bootstrap resamples.
    seed: int = 0
    # Held-out rankings (the rm data formats) to measure the reward model's pairwise accuracy on, with a
    # bootstrap interval; empty path = skip and report the RM stage's last logged held-out accuracy instead.
    rankings: DatasetSpec = dataclasses.field(default_factory=DatasetSpec)
    # Prompt + response tokens of a ranking row, longer responses cut as in RM training (match rm.max_length).
    rankings_max_length: int = 512
    # Best-of-N from the SFT model, picked by the RM (Gao et al. 2022): N samples per prompt; 0 = off.
    best_of_n: int = 4
    # Sampling temperature of the best-of-N candidates (> 0: greedy would give N identical candidates).
    best_of_n_temperature: float = 1.0
    # Best-of-N on the first this many eval prompts only (null: all): its N samples per prompt cost N times
    # a model's greedy pass, the dearest part of eval on a CPU.
    best_of_n_prompts: int | None = None
    # Held-out plain text ({"text"} rows) for the LM loss of each model, to see the "alignment tax"
    # (InstructGPT §4.2: RLHF can cost language-modelling ability); empty path = skip.
    lm_text: DatasetSpec = dataclasses.field(default_factory=DatasetSpec)
    # Tokens per lm_text row (longer rows are truncated).
    lm_max_length: int = 256
    # Bootstrap resamples behind every confidence interval in eval.json.
    bootstrap_samples: int = 2000
    # Coverage of those intervals (0.95 -> 2.5% and 97.5% percentiles).
    confidence: float = 0.95
    # The IFEval benchmark (Zhou et al. 2023): every model answers its 541 prompts, judged by Google's checkers.
    ifeval: IFEvalConfig = dataclasses.field(default_factory=IFEvalConfig)

    def __post_init__(self) -> None:
        check_positive_ints(
            self, ("max_prompts", "max_new_tokens", "batch_size", "bootstrap_samples", "samples_per_prompt")
        )
        if self.temperature < 0:
            raise LoraRlhfError(f"temperature: {self.temperature!r} must be >= 0 (0 = greedy)")
        if self.samples_per_prompt > 1 and self.temperature == 0:
            raise LoraRlhfError(
                f"samples_per_prompt: {self.samples_per_prompt!r} needs temperature > 0 (greedy answers are identical)"
            )
        if self.examples < 0:
            raise LoraRlhfError(f"examples: {self.examples!r} must be >= 0")
        check_positive_ints(self, ("best_of_n_prompts",), nullable=True)
        if self.best_of_n < 0:
            raise LoraRlhfError(f"best_of_n: {self.best_of_n!r} must be >= 0 (0 = off)")
        if not self.best_of_n_temperature > 0:
            raise LoraRlhfError(
                f"best_of_n_temperature: {self.best_of_n_temperature!r} must be > 0 (candidates are sampled)"
            )
        for key in ("lm_max_length", "rankings_max_length"):
            if getattr(self, key) < 2:
                raise LoraRlhfError(f"{key}: {getattr(self, key)!r} must be at least 2")
        if not 0 < self.confidence < 1:
            raise LoraRlhfError(f"confidence: {self.confidence!r} must lie strictly between 0 and 1")

    def lengths(self) -> dict[str, int]:
        """The token lengths eval works at, by recipe key, for `models.positions.check_lengths` (issue 29)."""
        lengths = {
            "eval.max_new_tokens": self.max_new_tokens,
            "eval.rankings_max_length": self.rankings_max_length,
            "eval.lm_max_length": self.lm_max_length,
        }
        if self.ifeval.enabled:
            lengths["eval.ifeval.max_new_tokens"] = self.ifeval.max_new_tokens
        return lengths
