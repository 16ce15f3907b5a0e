"""Built-in base model names, resolved to local folders: the embedded demo model and the tiny test models."""

from __future__ import annotations

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.models import demo_model, tiny

# The embedded demo's model: `model.name_or_path: demo:smollm2` (see lora_rlhf.models.demo_model).
DEMO_MODEL = "demo:smollm2"
# Random-weight models for tests and the smoke recipe: `tiny:<arch>` (see lora_rlhf.models.tiny).
TINY_PREFIX = "tiny:"
# The bare base model, every adapter off, as a role name (RoleStack.use, the server's "base" model).
BASE = "base"


def resolve_model_name(name: str) -> str:
    """Built-in names ("demo:smollm2", "tiny:<arch>") to their local folders; anything else unchanged."""
    if name == DEMO_MODEL:
        return str(demo_model.demo_model_dir())
    if name.startswith(TINY_PREFIX):
        arch = name.removeprefix(TINY_PREFIX)
        if arch not in tiny.TINY_ARCHITECTURES:
            choices = ", ".join(TINY_PREFIX + a for a in tiny.TINY_ARCHITECTURES)
            raise LoraRlhfError(f"model.name_or_path: {name!r}: tiny models are {choices}")
        return str(tiny.tiny_model_dir(arch))
    return name
