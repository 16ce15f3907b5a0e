"""PPO-ptx (InstructGPT §3.5): rollout, rewards and advantages, clipped losses, KL control, the stage loop
(`lora_rlhf.ppo.trainer.train_ppo`; this package's import stays light, for the config)."""

from lora_rlhf.ppo.config import PPOConfig

__all__ = ["PPOConfig"]
