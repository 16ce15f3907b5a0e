"""Read a run's local data files before the base model loads, so a bad row costs seconds, not a model load.

Only the row formats are checked here (no tokenizer yet); the stages parse again and tokenize, and a prompt
too long for max_length is still found then. Hub datasets are left to the stages: reading one twice could
cost more than the model load it would save.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lora_rlhf.config.recipe import RecipeConfig
from lora_rlhf.data.demonstrations import parse_demonstration
from lora_rlhf.data.prompts import parse_prompt
from lora_rlhf.data.rankings import parse_ranking
from lora_rlhf.data.rows import OnBadRow, parse_rows
from lora_rlhf.data.sources import DatasetSpec, is_local, load_rows
from lora_rlhf.pipeline.run_dir import RunDir

Check = tuple[DatasetSpec | None, Callable[[Mapping[str, Any]], Any], OnBadRow]


def check_data(recipe: RecipeConfig, run: RunDir, stages: Sequence[str]) -> None:
    """Raise the one-line error a stage would raise for a bad local file or row, before any model is loaded."""
    if recipe.demo.enabled:
        return  # the demo writes its data during the run
    for spec, parse, on_bad_row in _checks(recipe, run, stages):
        if spec is not None and spec.path and is_local(spec.path):
            parse_rows(load_rows(spec), parse, spec.display(), on_bad_row)


def _checks(recipe: RecipeConfig, run: RunDir, stages: Sequence[str]) -> list[Check]:
    def todo(stage: str) -> bool:
        return stage in stages and not run.finished(stage)

    checks: list[Check] = []
    if todo("sft"):
        checks += [
            (spec, parse_demonstration, recipe.sft.on_bad_row) for spec in (recipe.sft.data, recipe.sft.eval_data)
        ]
    if todo("rm"):
        rank = functools.partial(parse_ranking, ties=recipe.rm.ties)
        checks += [(spec, rank, recipe.rm.on_bad_row) for spec in (recipe.rm.data, recipe.rm.eval_data)]
        checks.append((recipe.rm.demonstrations, parse_demonstration, recipe.rm.on_bad_row))
    if todo("ppo"):
        checks.append((recipe.ppo.prompts, parse_prompt, recipe.ppo.on_bad_row))
    if "eval" in stages:
        checks.append((recipe.eval.prompts, parse_prompt, "error"))
    return checks
