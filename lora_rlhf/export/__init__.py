"""Exporting roles as standard checkpoints other libraries load without lora_rlhf (issue 28)."""

from lora_rlhf.export.reward import RewardExport, export_reward

__all__ = ["RewardExport", "export_reward"]
