"""Export a run's reward role as a standard checkpoint: `*ForSequenceClassification`, and optionally a
PEFT adapter of task type SEQ_CLS (issue 28).

OUT/ is a plain transformers folder — config, merged safetensors, the tokenizer (pad token, right padding),
README.md — that `AutoModelForSequenceClassification.from_pretrained(OUT)`, `pipeline("text-classification",
model=OUT, function_to_apply="none")` and TRL's `GRPOTrainer(reward_funcs=OUT)` load as they stand.
OUT/peft_adapter/ (with `peft_adapter=True`) is the same model as an adapter on the unmerged base: the reward
LoRA with `score` (and a final LayerNorm that carries the head's bias) in `modules_to_save`.

The base is reloaded unquantized from its checkpoint, never dequantized from a run's NF4 copy (see
`load_sequence_classifier`); W' = W + (alpha / r) B A is PEFT's `merge_and_unload`, as in `lora-rlhf merge`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Literal

import torch

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.export.seq_cls import (
    BiasMode,
    BiasPlacement,
    final_layer_norm,
    install_head,
    load_sequence_classifier,
    score_layer,
)
from lora_rlhf.export.tokenizer import set_reward_padding
from lora_rlhf.hub.reward_export_card import reward_export_card
from lora_rlhf.inference.merge import adapter_base_name
from lora_rlhf.inference.sources import is_adapter_folder, run_roles
from lora_rlhf.io import atomic_dir
from lora_rlhf.models.adapter_io import ADAPTER_WEIGHTS, check_adapter_folder, load_head, saved_head_kind
from lora_rlhf.models.names import resolve_model_name
from lora_rlhf.paths import RunLayout

logger = logging.getLogger(__name__)

ExportDType = Literal["bfloat16", "float16", "float32"]
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
PEFT_SUBFOLDER = "peft_adapter"
INFO_FILE = "lora_rlhf_export.json"
REWARD_LABEL = "reward"


@dataclasses.dataclass(frozen=True)
class RewardSource:
    """The reward adapter folder to export and the base checkpoint it was trained on."""

    adapter: Path
    base: str  # as the recipe or adapter names it (e.g. a Hub id, "demo:smollm2")
    revision: str | None = None
    gguf_file: str | None = None


@dataclasses.dataclass(frozen=True)
class RewardExport:
    """What `export_reward` wrote."""

    folder: Path  # the merged *ForSequenceClassification folder
    adapter: Path | None  # folder/peft_adapter, or None
    architecture: str  # e.g. "LlamaForSequenceClassification"
    bias: BiasPlacement
    pad_token: str


def export_reward(
    source: str | Path,
    output: str | Path,
    *,
    base: str | None = None,
    dtype: ExportDType = "bfloat16",
    peft_adapter: bool = False,
    bias: BiasMode = "auto",
    trust_remote_code: bool = False,
) -> RewardExport:
    """Write the reward role of `source` (a run directory, or a reward adapter folder) to `output`, atomically.

    `base` overrides the base checkpoint the run or adapter names; `dtype` is that of the written weights;
    `bias` says where the head's bias goes (export/seq_cls.py). `output` must not exist or be empty.
    """
    if dtype not in DTYPES:
        raise LoraRlhfError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    found = reward_source(source, base)
    output = _check_output(output)
    checkpoint = resolve_model_name(found.base)
    model = load_sequence_classifier(
        checkpoint,
        DTYPES[dtype],
        revision=found.revision,
        trust_remote_code=trust_remote_code,
        gguf_file=found.gguf_file,
    )
    check_adapter_folder(found.adapter, model, found.base)  # one line naming a module that does not fit
    tokenizer = _reward_tokenizer(checkpoint, found, model, peft_adapter, trust_remote_code)
    head = load_head(found.adapter, model.config.get_text_config().hidden_size, torch.device("cpu"))
    placement = install_head(model, head.linear.weight.detach(), float(head.linear.bias.item()), bias)
    peft_model = with_reward_lora(model, found.adapter, found.base, _modules_to_save(model, placement))
    adapter_out = output / PEFT_SUBFOLDER if peft_adapter else None
    result = RewardExport(output, adapter_out, type(model).__name__, placement, tokenizer.pad_token)
    card = _card(found, result, dtype)
    with atomic_dir(output) as tmp:
        if peft_adapter:
            peft_model.save_pretrained(str(tmp / PEFT_SUBFOLDER))
            tokenizer.save_pretrained(str(tmp / PEFT_SUBFOLDER))
            (tmp / PEFT_SUBFOLDER / "README.md").write_text(card)
        merged = peft_model.merge_and_unload(safe_merge=True)
        merged.config.name_or_path = ""
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "README.md").write_text(card)
        (tmp / INFO_FILE).write_text(json.dumps(_info(found, result, dtype), indent=2) + "\n")
    logger.info("exported the reward model of %s as %s -> %s", source, result.architecture, output)
    return result


def reward_source(source: str | Path, base: str | None = None) -> RewardSource:
    """The reward adapter of a run directory (adapters/reward/) or a reward adapter folder, and its base."""
    path = Path(source).expanduser()
    if not path.exists():
        raise LoraRlhfError(f"{source} does not exist: give a run directory or a reward adapter folder")
    if is_adapter_folder(path):
        found = RewardSource(path, base or adapter_base_name(path))
    else:
        roles = run_roles(path)
        if "reward" not in roles:
            raise LoraRlhfError(f"run {source} has no 'reward' adapter (it holds: {', '.join(roles)})")
        found = RewardSource(roles["reward"], *_run_model(path, base))
    if saved_head_kind(found.adapter) != "reward":
        raise LoraRlhfError(f"{found.adapter} holds no reward head (head.safetensors of kind 'reward')")
    return found


def _run_model(run_dir: Path, base: str | None) -> tuple[str, str | None, str | None]:
    """(base name, revision, gguf_file) from a run's recipe.yaml; its device and quantization do not matter."""
    import yaml

    recipe_path = RunLayout(run_dir).recipe_path
    if not recipe_path.is_file():
        raise LoraRlhfError(f"{run_dir} is not a run directory: recipe.yaml is missing")
    model = (yaml.safe_load(recipe_path.read_text()) or {}).get("model") or {}
    name = base or model.get("name_or_path")
    if not name:
        raise LoraRlhfError(f"{recipe_path} names no model.name_or_path: pass the base explicitly")
    return str(name), model.get("revision"), model.get("gguf_file")


def _check_output(output: str | Path) -> Path:
    output = Path(output).expanduser()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise LoraRlhfError(f"output {str(output)!r} exists and is not an empty folder")
    return output


def _reward_tokenizer(checkpoint: str, found: RewardSource, model, peft_adapter: bool, trust_remote_code: bool):
    """The base's tokenizer with reward padding (export/tokenizer.py); grows the embeddings for a new pad token."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            checkpoint, revision=found.revision, trust_remote_code=trust_remote_code, gguf_file=found.gguf_file
        )
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LoraRlhfError(f"could not load the tokenizer of {checkpoint!r}: {first}") from exc
    rows = model.get_input_embeddings().weight.shape[0]
    if set_reward_padding(tokenizer) and tokenizer.pad_token_id >= rows:
        if peft_adapter:
            raise LoraRlhfError(
                f"the tokenizer of {found.base!r} has no token but EOS to pad with and its embeddings no spare row: "
                "a PEFT adapter would need a resized base; export the merged model only (no --peft-adapter)"
            )
        model.resize_token_embeddings(len(tokenizer))
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.pad_token_id = tokenizer.pad_token_id
    model.config.id2label, model.config.label2id = {0: REWARD_LABEL}, {REWARD_LABEL: 0}
    # "regression": one unbounded score (the pipeline then applies no sigmoid by default either).
    model.config.problem_type = "regression"
    return tokenizer


def _modules_to_save(model, placement: BiasPlacement) -> list[str]:
    names = [score_layer(model)[0]]
    norm = final_layer_norm(model)
    if norm is not None and placement.where == f"{norm[0]}.bias":
        names.append(norm[0])
    return names


def with_reward_lora(model, adapter: Path, base_name: str, modules_to_save: list[str]):
    """`model` wrapped as a SEQ_CLS PeftModel holding the reward LoRA weights of `adapter`, and
    `modules_to_save` (their current weights, the head's) saved beside them."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    config = LoraConfig.from_pretrained(str(adapter))
    config.task_type = "SEQ_CLS"
    config.modules_to_save = list(modules_to_save)
    config.base_model_name_or_path = base_name
    config.inference_mode = True
    peft_model = get_peft_model(model, config)
    saved = load_file(str(adapter / ADAPTER_WEIGHTS))
    # The full state holds the LoRA matrices (fresh here) and the modules_to_save copies (the head, as installed):
    # the saved LoRA matrices replace the fresh ones, every one of them, or the export stops.
    state = get_peft_model_state_dict(peft_model)
    missing = sorted(k for k in state if "lora_" in k and k not in saved)
    if missing or set(saved) - set(state):
        first = missing[0] if missing else sorted(set(saved) - set(state))[0]
        raise LoraRlhfError(f"{adapter} does not fit {type(model).__name__}: {first} has no counterpart")
    state.update(saved)
    set_peft_model_state_dict(peft_model, state)
    return peft_model.eval()


def _info(found: RewardSource, result: RewardExport, dtype: str) -> dict:
    return {
        "base": found.base,
        "adapter": str(found.adapter),
        "architecture": result.architecture,
        "dtype": dtype,
        "head_bias": result.bias.value,
        "bias_placed_in": result.bias.where,
        "reward_offset": result.bias.offset,
        "pad_token": result.pad_token,
        "padding_side": "right",
        "peft_adapter": PEFT_SUBFOLDER if result.adapter is not None else None,
    }


def _card(found: RewardSource, result: RewardExport, dtype: str) -> str:
    return reward_export_card(
        base_model=found.base,
        architecture=result.architecture,
        dtype=dtype,
        bias=result.bias,
        pad_token=result.pad_token,
        peft_subfolder=PEFT_SUBFOLDER if result.adapter is not None else None,
    )
