"""Inference with trained adapters: many adapters on one base (hot-swapped by name), and merging one into the base.

from lora_rlhf.inference import AdapterRegistry, GenerationOptions

registry = AdapterRegistry.from_run("runs/demo")             # the run's base + every role
registry.attach("other", "user/my-adapter")                  # a folder or a Hub id
registry.generate("policy", ["Sort 3 1 2"], GenerationOptions(max_new_tokens=32))
registry.compare(["base", "sft", "policy"], ["Sort 3 1 2"])
"""

from lora_rlhf.inference.generation import Completion, render
from lora_rlhf.inference.loading import base_config, base_config_from_run
from lora_rlhf.inference.merge import merge_adapter
from lora_rlhf.inference.options import GenerationOptions
from lora_rlhf.inference.registry import AdapterRegistry, UnknownAdapter

__all__ = [
    "AdapterRegistry",
    "Completion",
    "GenerationOptions",
    "UnknownAdapter",
    "base_config",
    "base_config_from_run",
    "merge_adapter",
    "render",
]
