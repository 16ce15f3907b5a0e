"""Memory planning: predict each stage's peak from the model's config and the recipe, before any download."""

from lora_rlhf.plan.estimate import PhaseMemory
from lora_rlhf.plan.phases import Plan, format_plan, plan_recipe
from lora_rlhf.plan.shapes import ModelShape, model_shape

__all__ = ["ModelShape", "PhaseMemory", "Plan", "format_plan", "model_shape", "plan_recipe"]
