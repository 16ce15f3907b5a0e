"""The rules for (re-)running into a run directory, on top of its layout (lora_rlhf.paths.RunLayout, which owns
where every file of a run lives).

A stage is finished when its adapters exist (they are written atomically, last). A finished stage is
never trained again into the same directory; an interrupted one (a checkpoint but no adapters) is
continued only with --resume; a recipe that contradicts what the directory already holds is refused.
--resume where none of the stages asked for has a checkpoint or is finished is refused too: the user
expects to continue, and starting from scratch instead would go unnoticed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.io import atomic_file
from lora_rlhf.paths import RunLayout
from lora_rlhf.train.checkpoint import list_checkpoints

# The roles each stage produces (dpo: the DPO policy, an LM adapter like policy; docs/dpo.md).
STAGE_ROLES = {"sft": ("sft",), "rm": ("reward",), "ppo": ("policy", "value"), "dpo": ("dpo",)}
# The recipe section each stage reads.
_STAGE_SECTIONS = {"sft": "sft", "rm": "rm", "ppo": "ppo", "dpo": "dpo"}


class RunDir(RunLayout):
    """A run directory's layout with the rules for training and evaluating into it."""

    def has_role(self, role: str) -> bool:
        return (self.adapter(role) / "adapter_config.json").is_file()

    def finished(self, stage: str) -> bool:
        # A critic-free ppo (ppo.advantage rloo / grpo, issue 27) writes no value adapter; ppo writes policy last.
        return all(self.has_role(role) for role in STAGE_ROLES[stage] if role != "value")

    def interrupted(self, stage: str) -> bool:
        """Not finished, with a checkpoint (folders of interrupted checkpoint writes and PPO guard stops do not
        count).
        """
        return not self.finished(stage) and bool(list_checkpoints(self.checkpoints(stage)))

    def create(self) -> None:
        """Make the directory and prove it writable, or raise one line saying why not (issue 12: an output
        dir that is a file, lies under a file or is read-only ended in a traceback).
        """
        blocker = next((p for p in (self.path, *self.path.parents) if p.exists() and not p.is_dir()), None)
        if blocker == self.path:
            raise LoraRlhfError(f"output directory {self.path} is a file, not a directory")
        if blocker is not None:
            raise LoraRlhfError(f"output directory {self.path}: {blocker} is a file, not a directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=self.path)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise LoraRlhfError(
                f"output directory {self.path} is not writable ({exc.strerror or type(exc).__name__})"
            ) from None

    def read_recipe(self) -> dict[str, Any] | None:
        if not self.recipe_path.is_file():
            return None
        return yaml.safe_load(self.recipe_path.read_text())

    def write_recipe(self, recipe: Mapping[str, Any]) -> None:
        with atomic_file(self.recipe_path) as handle:
            yaml.safe_dump(dict(recipe), handle, sort_keys=False)

    def claim(self, recipe: Mapping[str, Any]) -> None:
        """Record `recipe` as this directory's recipe, refusing one that contradicts what the run already made.

        What must match: the base model and the demo task always, and the section of every stage that has
        started (finished, or interrupted with checkpoints). Sections of stages not yet run may change, so
        a later stage can take its own overrides (`lora-rlhf ppo ... ppo.rewards.kl_coef=0.05` after sft and rm),
        and a failed start (a typo in a data path) can be corrected.
        """
        existing = self.read_recipe()
        if existing is not None:
            started = [
                section for stage, section in _STAGE_SECTIONS.items() if self.finished(stage) or self.interrupted(stage)
            ]
            for section in ("model", "demo", *started):
                if existing.get(section) != recipe.get(section):
                    key = first_difference({section: existing.get(section)}, {section: recipe.get(section)})
                    raise LoraRlhfError(
                        f"{self.path} holds a run made with another recipe (it differs at {key}); "
                        "use a new --output-dir, or the same recipe and overrides as before"
                    )
        self.path.mkdir(parents=True, exist_ok=True)
        if existing != dict(recipe):
            self.write_recipe(recipe)

    def check_can_train(self, stage: str, *, resume: bool) -> bool:
        """True if `stage` should run now; False if it is finished (skip); refuses an interrupted run without
        --resume.
        """
        if self.finished(stage):
            return False
        if self.interrupted(stage) and not resume:
            raise LoraRlhfError(
                f"stage {stage} was interrupted in {self.path} ({self.checkpoints(stage)} exists): "
                "pass --resume to continue it, or use a new --output-dir"
            )
        return True

    def check_resume(self, stages: Sequence[str]) -> None:
        """Refuse --resume when none of the training stages among `stages` has a checkpoint or is finished."""
        trained = [stage for stage in stages if stage in STAGE_ROLES]
        if not trained or any(self.finished(stage) or self.interrupted(stage) for stage in trained):
            return
        where = ", ".join(f"checkpoints/{stage}/" for stage in trained)
        raise LoraRlhfError(
            f"--resume: nothing to resume in {self.path}: no checkpoint in {where}; run without --resume to start"
        )


def first_difference(a: Any, b: Any, prefix: str = "") -> str:
    """The dotted key of the first place two nested mappings differ."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in list(a) + [k for k in b if k not in a]:
            if key not in a or key not in b or a[key] != b[key]:
                return first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.')}: {a!r} there, {b!r} now"
