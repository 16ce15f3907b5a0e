"""PPO-ptx (InstructGPT §3.5): rollout, rewards and advantages, clipped losses, KL control, the stage loop
(`lora_rlhf.ppo.trainer.train_ppo`; this package's import stays light, for the config and the phase hooks)."""

from lora_rlhf.ppo.config import PPOConfig
from lora_rlhf.ppo.hooks import PHASES, Phase, PhaseEvent, PhaseHook

__all__ = ["PHASES", "PPOConfig", "Phase", "PhaseEvent", "PhaseHook"]
