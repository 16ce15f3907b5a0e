"""Model cards for published adapters: YAML front matter the Hub indexes, then figures and how to load it.

`head_usage` is the one copy of the code that scores with a reward or value adapter folder without
lora_rlhf; both the card written beside a saved adapter and the published card carry it, and
tests/test_reward_card.py runs that very text against `RoleStack.rewards` / `RoleStack.values`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

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
    from lora_rlhf.data.sources import is_local

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
    eval_figures: Mapping[str, Any] | None = None,
    head_kind: str | None = None,
) -> str:
    """The README.md of one published adapter (or of a whole run's repo when role is "run").

    `head_kind` ("reward" or "value", from head.safetensors) adds the code that scores with the head.
    """
    from huggingface_hub import ModelCard, ModelCardData

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


# What a local card's code loads the adapter from; tests put the saved folder in its place.
LOCAL_ADAPTER = 'ADAPTER = "path/to/this/folder"  # the folder holding this README.md'

_HEAD_TEXT = {
    "reward": (
        "## Scoring without lora_rlhf\n\n"
        "The reward is `head.safetensors` applied to the backbone's last hidden state at each row's last "
        "non-pad token (`lora-rlhf rm` set its bias so the demonstrations score 0 on average). The input is "
        "the prompt (through the chat template, if the tokenizer has one), the response and EOS.\n\n"
        'As a standard checkpoint — `AutoModelForSequenceClassification`, `pipeline("text-classification", '
        'function_to_apply="none")`, or the `reward_funcs` of TRL\'s GRPO/RLOO trainers — export it with '
        "`lora-rlhf export-reward RUN_DIR -o OUT` (add `--peft-adapter` for a SEQ_CLS PEFT adapter too); the "
        "exported folder's card shows each way to load it (docs/reward_export.md)."
    ),
    "value": (
        "## Values without lora_rlhf\n\n"
        "The value of the state ending at each position is `head.safetensors` applied to the backbone's "
        "last hidden state there."
    ),
}
_HEAD_DETAILS = (
    "The head's keys are `weight` (1, hidden) and `bias` (1,) of a float32 `Linear(hidden, 1)`; the hidden "
    "state is the backbone's `last_hidden_state` (after the final norm, without the LM head). Pad on the "
    "left and give `position_ids = attention_mask.cumsum(-1) - 1` (clamped at 0): without them a model with "
    "absolute positions (GPT-2) encodes a padded row as if it started later. This code reproduces "
    "`lora_rlhf.RoleStack.{method}` (load the base as the run did, e.g. in 4-bit, for its exact figures):"
)

_HEAD_CODE = '''\
tokenizer = AutoTokenizer.from_pretrained(BASE, padding_side="left")
tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token  # padding is masked out: any token will do
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), ADAPTER).eval()
# The transformer under the LM head, with the LoRA layers in place (GPT-2's .transformer, Llama's .model).
backbone = model.get_base_model().base_model
weights = load_file(f"{ADAPTER}/head.safetensors")  # "weight" (1, hidden), "bias" (1,)
head = torch.nn.Linear(weights["weight"].shape[1], 1)
head.load_state_dict(weights)


def hidden_states(input_ids, attention_mask):
    """(B, T) ids and mask, padded on the left -> (B, T, H) last hidden states (after the final norm)."""
    # Positions count real tokens only, so a left-padded row is encoded as if it were unpadded.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    return out.last_hidden_state


def encode(prompt, response):
    """Token ids as lora_rlhf builds them: the prompt (chat template, if any), the response, then EOS."""
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": prompt}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    return ids + tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
'''

_HEAD_READ = {
    "reward": '''

@torch.no_grad()
def rewards(input_ids, attention_mask):
    """(B, T) ids and mask -> (B,) scores, read at each row's last non-pad token."""
    scores = head(hidden_states(input_ids, attention_mask).float()).squeeze(-1)  # (B, T)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask * positions).argmax(-1)
    return scores.gather(1, last[:, None]).squeeze(1)


pairs = [("Reverse the words: hello world", "world hello"), ("Say hi", "hi")]
batch = tokenizer.pad({"input_ids": [encode(p, r) for p, r in pairs]}, return_tensors="pt")
print(rewards(batch["input_ids"], batch["attention_mask"]))
''',
    "value": '''

@torch.no_grad()
def values(input_ids, attention_mask):
    """(B, T) ids and mask -> (B, T) value of the state ending at each position (pad positions mean nothing)."""
    return head(hidden_states(input_ids, attention_mask).float()).squeeze(-1)


pairs = [("Reverse the words: hello world", "world hello"), ("Say hi", "hi")]
batch = tokenizer.pad({"input_ids": [encode(p, r) for p, r in pairs]}, return_tensors="pt")
print(values(batch["input_ids"], batch["attention_mask"]))
''',
}


def hub_adapter(repo_id: str, subfolder: str | None) -> str:
    """The line of `head_usage` that fetches a published adapter folder (head.safetensors included)."""
    if not subfolder:
        return f'ADAPTER = snapshot_download("{repo_id}")'
    return f'ADAPTER = snapshot_download("{repo_id}", allow_patterns="{subfolder}/*") + "/{subfolder}"'


def head_usage(kind: str, base_model: str, adapter_line: str = LOCAL_ADAPTER) -> list[str]:
    """Card lines: how the `kind` head scores, and Python (transformers, peft, safetensors, torch) that does it.

    `adapter_line` assigns ADAPTER, the adapter folder: LOCAL_ADAPTER, or `hub_adapter(...)` when published.
    """
    if kind not in _HEAD_READ:
        raise ValueError(f"head kind must be one of {sorted(_HEAD_READ)}, not {kind!r}")
    imports = [
        "import torch",
        "from peft import PeftModel",
        "from safetensors.torch import load_file",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
    ]
    if "snapshot_download(" in adapter_line:
        imports.insert(1, "from huggingface_hub import snapshot_download")
    code = "\n".join([*imports, "", f'BASE = "{base_model}"', adapter_line, "", _HEAD_CODE + _HEAD_READ[kind]])
    details = _HEAD_DETAILS.format(method="rewards" if kind == "reward" else "values")
    return [_HEAD_TEXT[kind], "", details, "", "```python", code.rstrip("\n"), "```", ""]
