"""lora_rlhf: the InstructGPT recipe (SFT, ranking reward model, PPO-ptx) with one LoRA adapter per role
on a single, optionally 4-bit, base model."""

import logging

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.models import BaseModelConfig, LoraSettings, RoleStack

__version__ = "0.1.0"
__all__ = ["BaseModelConfig", "LoraRlhfError", "LoraSettings", "RoleStack", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
