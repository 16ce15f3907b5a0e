"""The embedded demo's config (YAML section "demo"): which task, how much data, how the programmatic labeler ranks."""

from __future__ import annotations

import dataclasses

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.validation import check_positive_ints


@dataclasses.dataclass
class DemoConfig:
    """The embedded task: verifiable instructions made by code, a programmatic labeler for the humans."""

    # Generate the task's data and use its labeler (rankings) and gold judge (evaluation).
    enabled: bool = False
    # Which task: "toy" (the families below: short answers a 135M RM can judge) or "ifeval" (a task stem of our
    # own and 1-3 of IFEval's verifiable instructions, judged by IFEval's checkers; recipes/ifeval.yaml).
    task: str = "toy"
    # ifeval task: the instruction ids to draw from (None: all of IFEval's but response_language).
    ifeval_instructions: list[str] | None = None
    # ifeval task: at most this many instructions per prompt (IFEval's own prompts carry 1 to 3).
    max_instructions: int = 3
    # The labeler ranks side-by-side responses of equal gold score as ties (needs rm.ties: skip_pairs).
    ties: bool = False
    # Task families to draw from (None: all of them).
    families: list[str] | None = None
    # Demonstrations the labeler writes for SFT (InstructGPT's SFT set had ~13k).
    demonstrations: int = 256
    # Prompts whose K sampled responses the labeler ranks for the RM (paper: ~33k prompts).
    ranking_prompts: int = 64
    # K, responses ranked per prompt (paper: 4 to 9).
    responses_per_prompt: int = 4
    # Sampling temperature of the SFT model when drawing the K responses to rank.
    sample_temperature: float = 1.0
    # Response budget when sampling for rankings.
    max_new_tokens: int = 48
    # Probability a labeler's pairwise judgement disagrees with the gold order (paper: ~27% disagreement).
    disagreement: float = 0.27
    # PPO prompts (paper: ~31k).
    ppo_prompts: int = 256
    # Held-out prompts for evaluation, disjoint from all training prompts.
    eval_prompts: int = 48
    # Held-out prompts whose K sampled responses the labeler ranks, for the RM's accuracy at evaluation
    # (never trained on; C(K, 2) pairs each, so a few dozen prompts give hundreds of pairs).
    eval_ranking_prompts: int = 32
    # Seed of the task generator and the labeler.
    seed: int = 0
    # A system turn written into every prompt of the demo's data (as TRL's conversational prompts); None
    # leaves the chat template's own default system prompt (SmolLM2's is 16 tokens of every prompt).
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        check_positive_ints(
            self,
            (
                "demonstrations",
                "ranking_prompts",
                "ppo_prompts",
                "eval_prompts",
                "eval_ranking_prompts",
                "max_new_tokens",
            ),
        )
        if self.responses_per_prompt < 2:
            raise LoraRlhfError(
                f"responses_per_prompt: {self.responses_per_prompt!r} must be >= 2 (K responses to rank)"
            )
        if not 0.0 <= self.disagreement <= 0.5:
            raise LoraRlhfError(f"disagreement: {self.disagreement!r} must be in [0, 0.5]")
        if self.sample_temperature <= 0:
            raise LoraRlhfError(f"sample_temperature: {self.sample_temperature!r} must be > 0")
        if self.task not in ("toy", "ifeval"):
            raise LoraRlhfError(f"task: {self.task!r} must be 'toy' or 'ifeval'")
        if not 1 <= self.max_instructions <= 3:
            raise LoraRlhfError(f"max_instructions: {self.max_instructions!r} must be 1, 2 or 3")
