"""The shared base model and the role adapters on it."""

from lora_rlhf.models.base import BaseModelConfig, load_base_model, load_tokenizer
from lora_rlhf.models.heads import ScalarHead
from lora_rlhf.models.lora import LoraSettings
from lora_rlhf.models.roles import BASE, KNOWN_ROLES, REFERENCE, RoleStack

__all__ = [
    "BASE",
    "KNOWN_ROLES",
    "REFERENCE",
    "BaseModelConfig",
    "LoraSettings",
    "RoleStack",
    "ScalarHead",
    "load_base_model",
    "load_tokenizer",
]
