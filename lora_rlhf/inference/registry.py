"""Many adapters on one base, attached and detached by name at run time, one generation at a time.

Every generation goes through the decoding engine (inference/engine.py), each row with its own adapter in a
shared forward (RoleStack.next_token_logits); `compare` decodes every adapter's rows as one batch. Every
generation, attach and detach holds the registry's lock, so no adapter is attached or removed mid-forward. The
server decodes concurrent requests together instead (serve/batcher.py): each decoding step, under the lock,
serves rows of several requests in one forward, and a row holds its adapter (`hold` / `release`) from its first
step to its last, so a detach waits for it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from safetensors import SafetensorError

from lora_rlhf.data.chat import Prompt
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.inference import generation, sources
from lora_rlhf.inference.engine import Row, generate_rows, generate_texts
from lora_rlhf.inference.generation import Completion, StopCheck
from lora_rlhf.inference.loading import base_config, base_config_from_run
from lora_rlhf.inference.options import GenerationOptions
from lora_rlhf.models.base import BaseModelConfig
from lora_rlhf.models.roles import BASE, RoleStack

logger = logging.getLogger(__name__)

# Context lengths above this are placeholders, not limits (transformers' "no limit" is int(1e30)).
_SANE_CONTEXT = 10_000_000
# Characters per token few texts exceed on average; only how early count_tokens can give up depends on it.
_PREFIX_CHARS_PER_TOKEN = 16


class UnknownAdapter(LoraRlhfError):
    """The name asked for is neither an attached adapter nor "base" (HTTP 404 in the server)."""


class AdapterRegistry:
    """A RoleStack serving named adapters; "base" is the bare model with every adapter off."""

    def __init__(self, stack: RoleStack) -> None:
        self.stack = stack
        self.lock = threading.Lock()
        self._released = threading.Condition(self.lock)  # notified when a held adapter is released
        self._holds: collections.Counter[str] = collections.Counter()  # adapter -> live rows decoding with it
        self._leaving: set[str] = set()  # adapters a detach waits to remove: no new row may hold them
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
        """ "base" and every attached adapter, in attach order."""
        return [BASE, *self.stack.roles]

    def attach(self, name: str, source: str | Path, *, revision: str | None = None) -> Path:
        """Attach the adapter at `source` (a folder or "owner/repo[/subfolder]" on the Hub) as `name`."""
        folder = sources.resolve_adapter_source(str(source), revision=revision)
        with self.lock:
            try:
                self.stack.load_role(name, folder)
            except (SafetensorError, OSError, ValueError) as exc:
                # A truncated or empty weights file, or a config PEFT refuses: the files are at fault, not the server.
                raise LoraRlhfError(f"adapter {name!r} could not be loaded from {source}: {exc}") from exc
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
        """Remove adapter `name` and free its weights; requests already running finish first (new ones get 404)."""
        with self.lock:
            self.require(name, allow_base=False)
            self._leaving.add(name)
            try:
                while self._holds[name]:  # rows mid-response with it (hold): wait, the lock released meanwhile
                    self._released.wait()
                self.stack.remove_role(name)
            finally:
                self._leaving.discard(name)
            self.sources.pop(name, None)
            self.created.pop(name, None)
        logger.info("detached adapter %r", name)

    def hold(self, name: str) -> str:
        """Keep adapter `name` attached until `release` (a row that will decode with it over several steps);
        returns the name to release. Call with the lock held, after `require(name)`."""
        resolved = self.stack.resolve(name)
        if resolved != BASE:
            self._holds[resolved] += 1
        return resolved

    def release(self, name: str) -> None:
        """Undo one `hold` (with the lock held): a detach waiting for the adapter may go on once none remain."""
        if name == BASE:
            return
        self._holds[name] -= 1
        if self._holds[name] <= 0:
            del self._holds[name]
            self._released.notify_all()

    # ----------------------------------------------------------- generation
    def render(self, prompt: Prompt, *, chat: bool = True, system: str | None = None) -> str:
        return generation.render(self.stack.tokenizer, prompt, chat=chat, system=system)

    def complete(
        self,
        name: str,
        texts: Sequence[str],
        options: GenerationOptions | None = None,
        *,
        halt: StopCheck | None = None,
    ) -> list[Completion]:
        """Responses of adapter `name` (or "base") to rendered prompt texts, under the lock.

        `halt()` true ends generation at the next token (finish_reason "length"); true already when the
        lock is won, it raises generation.Halted instead of starting.
        """
        with self.lock:
            self.require(name)
            return generate_texts(self.stack, name, texts, options or GenerationOptions(), halt=halt)

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
        """{name: responses} of several adapters to the same prompts, decoded as one batch whose rows each run
        under their own adapter; each adapter's answers are those `generate` gives it alone."""
        texts = [self.render(p, **render) for p in prompts]
        options = options or GenerationOptions()
        rows = [Row(name, t, options.for_choice(k)) for name in names for k, t in enumerate(texts)]
        with self.lock:
            for name in names:
                self.require(name)
            done = generate_rows(self.stack, rows)
        return {name: [c.text for c in done[i * len(texts) : (i + 1) * len(texts)]] for i, name in enumerate(names)}

    def count_tokens(self, text: str, *, beyond: int | None = None) -> int:
        """Tokens of a rendered prompt, as generation will see it.

        With `beyond`, a text whose first `beyond * _PREFIX_CHARS_PER_TOKEN` characters already hold more than
        `beyond` tokens is not tokenized further (the count returned is then a lower bound above `beyond`), so a
        2 MB prompt is refused in milliseconds rather than seconds.
        """
        if beyond is not None and len(text) > beyond * _PREFIX_CHARS_PER_TOKEN:
            head = self._count(text[: beyond * _PREFIX_CHARS_PER_TOKEN])
            if head > beyond + 1:  # + 1: the cut may split one token in two
                return head
        return self._count(text)

    def _count(self, text: str) -> int:
        return len(self.stack.tokenizer(text, add_special_tokens=False).input_ids)

    @property
    def context_length(self) -> int | None:
        """Most tokens (prompt + response) the base takes: the smaller of the model config's and the tokenizer's
        limits, each only where it is set and sane (tokenizers without one report 1e30); None if neither is."""
        config = getattr(self.stack.base_model, "config", None)
        known = [getattr(config, key, None) for key in ("max_position_embeddings", "n_positions")]
        known.append(getattr(self.stack.tokenizer, "model_max_length", None))
        sane = [n for n in known if isinstance(n, int) and 0 < n <= _SANE_CONTEXT]
        return min(sane, default=None)

    def require(self, name: str, *, allow_base: bool = True) -> None:
        if name == BASE and allow_base:
            return
        if not self.stack.has_role(name) or name in self._leaving:
            raise UnknownAdapter(f"model {name!r} does not exist; available: {', '.join(self.names)}")
