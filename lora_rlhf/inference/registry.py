"""Many adapters on one base, attached and detached by name at run time, one generation at a time.

`RoleStack.use()` switches the single active adapter of the shared base model, so two generations
running at once under different adapters would each run (part of) their forward passes under the
other's adapter. Every generation, attach and detach therefore holds the registry's lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from lora_rlhf.data.chat import Prompt
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.inference import generation, sources
from lora_rlhf.inference.generation import Completion
from lora_rlhf.inference.loading import base_config, base_config_from_run
from lora_rlhf.inference.options import GenerationOptions
from lora_rlhf.models.base import BaseModelConfig
from lora_rlhf.models.roles import BASE, RoleStack

logger = logging.getLogger(__name__)


class UnknownAdapter(LoraRlhfError):
    """The name asked for is neither an attached adapter nor "base" (HTTP 404 in the server)."""


class AdapterRegistry:
    """A RoleStack serving named adapters; "base" is the bare model with every adapter off."""

    def __init__(self, stack: RoleStack) -> None:
        self.stack = stack
        self.lock = threading.Lock()
        self.sources: dict[str, str] = {}  # name -> where it was loaded from
        self.created: dict[str, int] = {BASE: int(time.time())}  # name -> unix time it was attached

    @classmethod
    def load(cls, base: str | BaseModelConfig, **model_options) -> AdapterRegistry:
        """Load the base once: a folder, a Hub id, "demo:smollm2", "tiny:<arch>" or a BaseModelConfig."""
        config = base if isinstance(base, BaseModelConfig) else base_config(base, **model_options)
        return cls(RoleStack.load(config))

    @classmethod
    def from_run(cls, run_dir: str | Path, roles: Sequence[str] | None = None, **model_options) -> AdapterRegistry:
        """The base of a run directory (its recipe.yaml) with the run's adapters attached under their role names."""
        registry = cls.load(base_config_from_run(run_dir, **model_options))
        registry.attach_run(run_dir, roles)
        return registry

    # ------------------------------------------------------------- adapters
    @property
    def names(self) -> list[str]:
        """"base" and every attached adapter, in attach order."""
        return [BASE, *self.stack.roles]

    def attach(self, name: str, source: str | Path, *, revision: str | None = None) -> Path:
        """Attach the adapter at `source` (a folder or "owner/repo[/subfolder]" on the Hub) as `name`."""
        folder = sources.resolve_adapter_source(str(source), revision=revision)
        with self.lock:
            self.stack.load_role(name, folder)
            self.sources[name] = str(source)
            self.created[name] = int(time.time())
        logger.info("attached adapter %r from %s", name, source)
        return folder

    def attach_run(self, run_dir: str | Path, roles: Sequence[str] | None = None) -> list[str]:
        """Attach a run directory's adapters (all, or `roles`) under their role names."""
        found = sources.run_roles(run_dir)
        wanted = list(roles) if roles else list(found)
        missing = [r for r in wanted if r not in found]
        if missing:
            raise LoraRlhfError(f"run {run_dir} has no {missing[0]!r} adapter (it holds: {', '.join(found)})")
        for role in wanted:
            self.attach(role, found[role])
        return wanted

    def detach(self, name: str) -> None:
        """Remove adapter `name` and free its weights; requests already running finish first."""
        with self.lock:
            self.require(name, allow_base=False)
            self.stack.remove_role(name)
            self.sources.pop(name, None)
            self.created.pop(name, None)
        logger.info("detached adapter %r", name)

    # ----------------------------------------------------------- generation
    def render(self, prompt: Prompt, *, chat: bool = True, system: str | None = None) -> str:
        return generation.render(self.stack.tokenizer, prompt, chat=chat, system=system)

    def complete(
        self, name: str, texts: Sequence[str], options: GenerationOptions | None = None
    ) -> list[Completion]:
        """Responses of adapter `name` (or "base") to rendered prompt texts, under the lock."""
        with self.lock:
            self.require(name)
            return generation.generate_texts(self.stack, name, texts, options or GenerationOptions())

    def generate(
        self,
        name: str,
        prompts: Sequence[Prompt],
        options: GenerationOptions | None = None,
        *,
        chat: bool = True,
        system: str | None = None,
    ) -> list[str]:
        """Response texts of adapter `name` to prompts (strings or chat messages), chat template applied."""
        texts = [self.render(p, chat=chat, system=system) for p in prompts]
        return [c.text for c in self.complete(name, texts, options)]

    def compare(
        self, names: Sequence[str], prompts: Sequence[Prompt], options: GenerationOptions | None = None, **render
    ) -> dict[str, list[str]]:
        """{name: responses} of several adapters to the same prompts."""
        return {name: self.generate(name, prompts, options, **render) for name in names}

    def stream(self, name: str, text: str, options: GenerationOptions | None = None) -> Iterator[str]:
        """Pieces of adapter `name`'s response to one rendered prompt as they are generated (see stream_text)."""
        self.require(name)
        return generation.stream_text(self.stack, name, text, options or GenerationOptions(), lock=self.lock, check=self.require)

    def require(self, name: str, *, allow_base: bool = True) -> None:
        if name == BASE and allow_base:
            return
        if not self.stack.has_role(name):
            raise UnknownAdapter(f"model {name!r} does not exist; available: {', '.join(self.names)}")
