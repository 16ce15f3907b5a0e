"""Publishing adapters to the Hugging Face Hub: model cards and uploads through huggingface_hub."""

from lora_rlhf.hub.card import model_card
from lora_rlhf.hub.push import PushPlan, plan_push, push

__all__ = ["PushPlan", "model_card", "plan_push", "push"]
