"""PPO-ptx (InstructGPT §3.5): rollout, rewards and advantages, clipped losses, KL control, the stage loop."""

from lora_rlhf.ppo.config import PPOConfig

__all__ = ["PPOConfig", "train_ppo"]


def __getattr__(name: str):
    # The trainer pulls in the whole stack; keep `import lora_rlhf.ppo` (for the config) light.
    if name == "train_ppo":
        from lora_rlhf.ppo.trainer import train_ppo

        return train_ppo
    raise AttributeError(name)
