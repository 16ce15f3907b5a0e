"""The ablation: sft, best-of-N and every training method from one run's sft and reward, one table (issue 27)."""

from lora_rlhf.pipeline.ablation.run import AblationOptions, run_ablation
from lora_rlhf.pipeline.ablation.variants import DEFAULT_METHODS, METHODS

__all__ = ["DEFAULT_METHODS", "METHODS", "AblationOptions", "run_ablation"]
