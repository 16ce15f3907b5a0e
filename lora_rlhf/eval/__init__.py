"""Evaluation: base vs sft vs ppo on held-out prompts (gold score, win rates, RM score, KL)."""

from lora_rlhf.eval.compare import pairwise_win_rates, win_rate
from lora_rlhf.eval.config import EvalConfig
from lora_rlhf.eval.run import evaluate

__all__ = ["EvalConfig", "evaluate", "pairwise_win_rates", "win_rate"]
