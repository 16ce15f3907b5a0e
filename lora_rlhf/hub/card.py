"""Model cards for published adapters: YAML front matter the Hub indexes, then figures and how to load it.

The lines that score with a reward or value head without lora_rlhf (`head_usage`) are lora_rlhf.models.head_usage's:
the card written beside a saved adapter carries them too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from lora_rlhf.data.sources import is_local
from lora_rlhf.eval.result import EvalResult
from lora_rlhf.models.head_usage import head_usage, hub_adapter

# Built-in model names and the Hub repository each one was converted from.
KNOWN_BASES = {"demo:smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
ROLE_TAGS = {
    "sft": ["sft"],
    "reward": ["reward-model"],
    "policy": ["ppo"],
    "value": ["ppo", "value-function"],
    "dpo": ["dpo"],
}
# eval.json keys that describe each role (the policy is "ppo" there).
_EVAL_KEY = {"sft": "sft", "policy": "ppo", "dpo": "dpo"}
_ROLE_TEXT = {
    "sft": "supervised fine-tuning on demonstrations (InstructGPT step 1); the KL reference of PPO",
    "reward": "a reward model trained on K-way rankings (InstructGPT step 2); its scalar head is head.safetensors",
    "policy": "the PPO policy (InstructGPT step 3), trained against the reward model with a KL penalty to sft",
    "run": "every role of an InstructGPT run (SFT, reward model, PPO policy and value), one folder each",
    "value": "PPO's value function (initialised from the reward model); its scalar head is head.safetensors",
    "dpo": (
        "a policy trained by Direct Preference Optimization (Rafailov et al. 2023) on the same rankings as the "
        "reward model, starting from sft with sft as its frozen reference; no reward model or RL loop"
    ),
}


def hub_base_model(name: str | None) -> str | None:
    """The Hub id of a base given as a recipe name, or None for a local folder (the card then omits base_model)."""
    if not name:
        return None
    if name in KNOWN_BASES:
        return KNOWN_BASES[name]
    return name if _HUB_ID.match(name) and not os.path.exists(os.path.expanduser(name)) else None


def recipe_datasets(recipe: Mapping[str, Any] | None) -> list[str]:
    """Hub dataset ids a recipe trained or evaluated on (local files are left out)."""
    found = [value for value in _dataset_paths(recipe or {}) if not is_local(value) and _HUB_ID.match(value)]
    return sorted(set(found))


def _dataset_paths(node: Any) -> Iterator[str]:
    if isinstance(node, Mapping):
        if isinstance(node.get("path"), str) and "split" in node:
            yield node["path"]
        for value in node.values():
            yield from _dataset_paths(value)


def flatten_figures(figures: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """{"gold": {"ppo": 0.8}} -> {"gold.ppo": 0.8}, numbers only."""
    flat: dict[str, float] = {}
    for key, value in figures.items():
        if isinstance(value, Mapping):
            flat.update(flatten_figures(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def model_card(
    role: str,
    *,
    base_model: str | None,
    repo_id: str,
    subfolder: str | None = None,
    datasets: Sequence[str] = (),
    eval_result: EvalResult | None = None,
    head_kind: str | None = None,
) -> str:
    """The README.md of one published adapter (or of a whole run's repo when role is "run").

    `eval_result` (the run's eval.json) gives the figures, named by their eval.json keys ("gold.ppo").
    `head_kind` ("reward" or "value", from head.safetensors) adds the code that scores with the head.
    """
    from huggingface_hub import ModelCard, ModelCardData

    eval_figures = eval_result.to_json() if eval_result is not None else None
    tags = ["lora", "peft", "rlhf", "instructgpt", "lora_rlhf", *ROLE_TAGS.get(role, [])]
    data = ModelCardData(
        base_model=base_model,
        library_name="peft",
        pipeline_tag="text-generation",
        tags=list(dict.fromkeys(tags)),
        datasets=list(datasets) or None,
        eval_results=_eval_results(role, eval_figures, repo_id),
        model_name=repo_id.split("/")[-1] if eval_figures else None,
    )
    body = [f"# {repo_id}" + (f" — `{subfolder}`" if subfolder else ""), ""]
    on = f"`{base_model}`" if base_model else "a local base model (no Hub id was given: `lora-rlhf push --base-model`)"
    body += [f"LoRA adapter{'s' if role == 'run' else ''} for {on}: {_ROLE_TEXT.get(role, role)}.", ""]
    body += [
        "Trained with lora_rlhf — InstructGPT's SFT, reward model and PPO with one "
        "LoRA adapter per role on one (4-bit) base.",
        "",
    ]
    body += _figures_table(eval_figures)
    body += _usage(base_model, repo_id, subfolder)
    if head_kind is not None:
        body += head_usage(head_kind, base_model or "BASE_MODEL", hub_adapter(repo_id, subfolder))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)).content


def _eval_results(role: str, figures: Mapping[str, Any] | None, repo_id: str):
    from huggingface_hub import EvalResult

    if not figures:
        return None
    key = _EVAL_KEY.get(role)
    flat = flatten_figures(figures)
    wanted = {name: value for name, value in flat.items() if (key and name.endswith(f".{key}")) or "." not in name}
    results = [
        EvalResult(
            task_type="text-generation",
            dataset_type="held-out-prompts",
            dataset_name="held-out prompts",
            metric_type=name,
            metric_value=value,
            metric_name=name,
        )
        for name, value in sorted(wanted.items())
    ]
    return results or None


def _figures_table(figures: Mapping[str, Any] | None) -> list[str]:
    if not figures:
        return []
    lines = ["## Evaluation (the run's eval.json)", "", "| figure | value |", "|---|---|"]
    lines += [f"| {name} | {value:.4g} |" for name, value in flatten_figures(figures).items()]
    return [*lines, ""]


def _usage(base_model: str | None, repo_id: str, subfolder: str | None) -> list[str]:
    base = base_model or "BASE_MODEL"
    sub = f', subfolder="{subfolder}"' if subfolder else ""
    lines = [
        "## How to load it",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{base}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{base}")',
        f'model = PeftModel.from_pretrained(base, "{repo_id}"{sub})',
        "```",
        "",
        "With lora_rlhf, several adapters on one base, hot-swapped by name:",
        "",
        "```bash",
        f"lora-rlhf generate --base {base} "
        f'--adapter mine={repo_id}{"/" + subfolder if subfolder else ""} --prompt "Hello"',
        "```",
        "",
    ]
    return lines
