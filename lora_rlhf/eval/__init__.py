"""Evaluation: base vs sft vs ppo on held-out prompts (gold score, win rates, RM score, KL), each comparison
with a paired bootstrap interval; RM accuracy on held-out rankings, best-of-N, and the LM loss (alignment tax)."""

from lora_rlhf.eval.compare import pairwise_win_rates, win_rate
from lora_rlhf.eval.config import EvalConfig
from lora_rlhf.eval.result import EvalResult, read_eval_result, write_eval_result
from lora_rlhf.eval.run import evaluate
from lora_rlhf.eval.samples import EvalSamples, read_eval_samples, write_eval_samples
from lora_rlhf.eval.stats import bootstrap_ci, cluster_accuracy_ci, paired_diff_ci, win_rate_ci

__all__ = [
    "EvalConfig",
    "EvalResult",
    "EvalSamples",
    "bootstrap_ci",
    "cluster_accuracy_ci",
    "evaluate",
    "paired_diff_ci",
    "pairwise_win_rates",
    "read_eval_result",
    "read_eval_samples",
    "win_rate",
    "win_rate_ci",
    "write_eval_result",
    "write_eval_samples",
]
