"""A recipe: the whole run's config, one section per stage, as YAML (recipes/*.yaml) or dataclasses.

    model:  the one base (BaseModelConfig)
    demo:   the embedded instruction-following task and its programmatic labeler (off for real data)
    sft / rm / ppo / dpo / eval:  the stages' own configs (dpo runs in the pipeline only when dpo.enabled)

`lora-rlhf pipeline` with no arguments runs recipes/demo.yaml, shipped inside the package.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from lora_rlhf.config.loader import build, merge, parse_overrides, to_dict
from lora_rlhf.dpo.config import DPOConfig
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.eval.config import EvalConfig
from lora_rlhf.models.base import BaseModelConfig
from lora_rlhf.ppo.config import PPOConfig
from lora_rlhf.rm.config import RMConfig
from lora_rlhf.sft.config import SFTConfig
from lora_rlhf.tracking import check_report_to
from lora_rlhf.validation import check_positive_ints

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
DEFAULT_RECIPE = RECIPES / "demo.yaml"


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


@dataclasses.dataclass
class RecipeConfig:
    """The whole run."""

    model: BaseModelConfig = dataclasses.field(default_factory=BaseModelConfig)
    demo: DemoConfig = dataclasses.field(default_factory=DemoConfig)
    sft: SFTConfig = dataclasses.field(default_factory=SFTConfig)
    rm: RMConfig = dataclasses.field(default_factory=RMConfig)
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    # DPO on the same rankings as the RM, its unset data keys the rm section's (lora_rlhf/dpo, docs/dpo.md).
    dpo: DPOConfig = dataclasses.field(default_factory=DPOConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    # Experiment trackers that also receive every metrics row, on the main process (accelerate's: tensorboard,
    # wandb, trackio, mlflow, ...; lora_rlhf.tracking). Empty: metrics/*.jsonl only.
    report_to: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        check_report_to(self.report_to)
        if self.demo.enabled and self.demo.ties and self.rm.ties != "skip_pairs":
            raise LoraRlhfError(
                f"demo.ties: true writes tied ranks, which rm.ties: {self.rm.ties!r} refuses (set rm.ties: skip_pairs)"
            )
        if self.demo.enabled and self.demo.ties and self.dpo.enabled and self.dpo.ties == "error":
            raise LoraRlhfError(
                "demo.ties: true writes tied ranks, which dpo.ties: 'error' refuses (set dpo.ties: null)"
            )

    @property
    def resolved_dpo(self) -> DPOConfig:
        """The dpo section with its unset data keys taken from the rm section (DPO trains on the RM's rankings)."""
        return self.dpo.resolved(self.rm)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A recipe file as a mapping, with one-line errors for a missing file or bad YAML."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise LoraRlhfError(f"recipe {str(path)!r} is a directory, not a YAML file")
    if not path.is_file():
        raise LoraRlhfError(f"recipe {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raw = path.read_bytes()
        line = raw[: exc.start].count(b"\n") + 1
        bad = raw[exc.start : exc.start + 1]
        raise LoraRlhfError(f"recipe {path}, line {line}: byte {bad!r} is not UTF-8 (save the file as UTF-8)") from None
    except yaml.YAMLError as exc:
        raise LoraRlhfError(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    except OSError as exc:
        raise LoraRlhfError(f"recipe {path}: {exc.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LoraRlhfError(f"recipe {path} must be a mapping of sections (model, sft, rm, ppo, eval, ...)")
    return data


def load_recipe(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RecipeConfig:
    """Build and validate a recipe from a YAML file (default: the embedded demo) and dotted overrides."""
    data = read_yaml(path or DEFAULT_RECIPE)
    try:
        return build(RecipeConfig, merge(data, parse_overrides(overrides)))
    except LoraRlhfError as exc:
        where = str(path or "the default recipe") + (" with overrides" if overrides else "")
        raise LoraRlhfError(f"{exc} (in {where})") from None
