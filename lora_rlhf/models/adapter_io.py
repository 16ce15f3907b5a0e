"""Reading and writing role folders: a plain PEFT adapter folder, plus head.safetensors for scalar heads.

The folder is exactly what `peft.PeftModel.from_pretrained(base, folder)` expects, so a user never
needs lora_rlhf to load a policy. Everything is safetensors; nothing is pickled.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.io import JsonWording, atomic_dir, parse_json
from lora_rlhf.models.head_usage import head_usage
from lora_rlhf.models.heads import ScalarHead

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
HEAD_WEIGHTS = "head.safetensors"
_PEFT_PREFIX = "base_model.model."
_CONFIG_WORDING = JsonWording(
    not_utf8="{where} is not UTF-8 text (byte {offset})",
    not_json="{where} is not valid JSON: {error}",
    too_deep="{where} nests arrays or objects too deeply to be an adapter config",
)

logger = logging.getLogger(__name__)


def save_adapter(
    peft_model, role: str, folder: Path, *, head: ScalarHead | None, base_name: str, card: str | None
) -> Path:
    """Write adapter `role` of `peft_model` (and its head) into `folder`, replacing it atomically."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(peft_model, adapter_name=role)
    config = copy.deepcopy(peft_model.peft_config[role])
    config.inference_mode = True
    config.base_model_name_or_path = base_name
    with atomic_dir(folder) as tmp:
        config.save_pretrained(str(tmp))
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        if head is not None:
            save_head(head, tmp / HEAD_WEIGHTS)
        (tmp / "README.md").write_text(card if card is not None else default_card(role, base_name, head))
    return folder


def save_head(head: ScalarHead, path: Path) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in head.linear.state_dict().items()}
    save_file(tensors, str(path), metadata={"kind": head.kind, "hidden_size": str(head.linear.in_features)})


def load_head(folder: Path, hidden_size: int, device: torch.device) -> ScalarHead | None:
    """The head saved beside an adapter, or None if the folder has none."""
    path = folder / HEAD_WEIGHTS
    if not path.is_file():
        return None
    metadata = _head_metadata(path)
    kind = metadata.get("kind", "reward")
    saved_size = metadata.get("hidden_size", str(hidden_size))
    if kind not in ("reward", "value") or not saved_size.isdigit():  # safetensors metadata is any str -> str
        raise LoraRlhfError(
            f"{path}: its metadata (kind {kind!r}, hidden_size {saved_size!r}) is not a reward or value head's"
        )
    saved_size = int(saved_size)
    if saved_size != hidden_size:
        raise LoraRlhfError(
            f"{path} was made for another base: its head reads hidden size {saved_size}, this base has {hidden_size}"
        )
    head = ScalarHead(hidden_size, kind)
    tensors = load_file(str(path))  # readable: _head_metadata opened it
    _check_head_tensors(path, tensors, head)
    head.linear.load_state_dict(tensors)
    return head.to(device)


def _check_head_tensors(path: Path, tensors: dict[str, torch.Tensor], head: ScalarHead) -> None:
    """One line naming the tensor and its shape, not load_state_dict's size-mismatch traceback (issue 29)."""
    expected = {name: list(value.shape) for name, value in head.linear.state_dict().items()}
    for name, shape in expected.items():
        if name not in tensors:
            raise LoraRlhfError(f"{path}: tensor {name!r} is missing (a {head.kind} head holds {sorted(expected)})")
        if list(tensors[name].shape) != shape:
            raise LoraRlhfError(
                f"{path}: tensor {name!r} has shape {list(tensors[name].shape)}, a {head.kind} head's is {shape}"
            )
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise LoraRlhfError(f"{path}: tensor {extra[0]!r} is not part of a {head.kind} head ({sorted(expected)})")


def saved_head_kind(folder: Path) -> str | None:
    """ "reward" or "value" for a folder with head.safetensors (heads saved without a kind were rewards), else None."""
    path = Path(folder) / HEAD_WEIGHTS
    return _head_metadata(path).get("kind", "reward") if path.is_file() else None


def _head_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError) as exc:  # empty or truncated: a torn download or copy (issue 29)
        raise LoraRlhfError(f"{path} is not a readable safetensors file: {exc}") from None


def check_adapter_folder(folder: str | Path, base_model: nn.Module, base_name: str | None = None) -> Path:
    """Return `folder` if it holds an adapter whose every matrix fits a module of `base_model`.

    Raises a one-line LoraRlhfError naming the first module that is missing or of another shape,
    instead of the size-mismatch stack trace `load_state_dict` would give. An adapter whose config names
    another base than `base_name` but fits it gets a warning naming both (issue 29): a fine-tune of the same
    architecture fits every shape, but the adapter's deltas were learned against other weights.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise LoraRlhfError(f"adapter folder {str(folder)!r} does not exist")
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (folder / name).is_file():
            raise LoraRlhfError(f"{folder} is not a PEFT adapter folder: {name} is missing")
    config = _read_config(folder / ADAPTER_CONFIG)
    try:
        with safe_open(str(folder / ADAPTER_WEIGHTS), framework="pt") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError) as exc:  # empty or truncated (a torn download or copy)
        raise LoraRlhfError(f"{folder / ADAPTER_WEIGHTS} is not a readable safetensors file: {exc}") from None
    for key, shape in shapes.items():
        _check_tensor_fits(folder, key, shape, base_model)
    named = config.get("base_model_name_or_path")
    if isinstance(named, str) and base_name and not same_base(named, base_name):
        logger.warning(
            "adapter %s was trained on %s, not on this base (%s): its shapes fit, but its weights were learned "
            "against another model's",
            folder,
            named,
            base_name,
        )
    return folder


def _read_config(path: Path) -> dict:
    """adapter_config.json as a dict, with a one-line error for what PEFT would fail on deep inside (issue 29):
    a file that is not UTF-8 or nests past the recursion limit, a peft_type PEFT has no class for (KeyError),
    a rank that is not a number (TypeError in the LoRA layer)."""
    config = parse_json(path.read_bytes(), str(path), _CONFIG_WORDING)
    if not isinstance(config, dict):
        raise LoraRlhfError(f"{path} holds a JSON {type(config).__name__}, not an object of fields")
    if config.get("peft_type") != "LORA":
        raise LoraRlhfError(f"{path}: peft_type {config.get('peft_type')!r} is not 'LORA', the only kind attached here")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise LoraRlhfError(f"{path}: r {rank!r} must be a positive integer (the LoRA rank)")
    return config


def same_base(a: str, b: str) -> bool:
    """Whether two base names (Hub ids or folders) name the same model: equal, or the same last path part (a Hub
    id and its download, or one model's folder on two machines); an empty or "unknown" name matches anything."""
    unknown = ("", "unknown")
    if a.strip() in unknown or b.strip() in unknown:
        return True
    return a.rstrip("/") == b.rstrip("/") or Path(a.rstrip("/")).name.lower() == Path(b.rstrip("/")).name.lower()


def _check_tensor_fits(folder: Path, key: str, shape: tuple[int, ...], base_model: nn.Module) -> None:
    if ".lora_A." not in key and ".lora_B." not in key:
        return
    path = key.removeprefix(_PEFT_PREFIX).split(".lora_")[0]
    try:
        module = base_model.get_submodule(path)
    except AttributeError:
        raise LoraRlhfError(f"adapter {folder} was made for another base: this base has no module {path!r}") from None
    module = getattr(module, "base_layer", module)  # already wrapped by another role's LoRA layer
    in_features = getattr(module, "in_features", None)
    out_features = getattr(module, "out_features", None)
    expected = shape[1] if ".lora_A." in key else shape[0]
    actual = in_features if ".lora_A." in key else out_features
    if actual is not None and expected != actual:
        side = "input" if ".lora_A." in key else "output"
        raise LoraRlhfError(
            f"adapter {folder} was made for another base: {path} has {side} size {actual} here, "
            f"the adapter expects {expected}"
        )


def default_card(role: str, base_name: str, head: ScalarHead | None = None) -> str:
    """A minimal model card; `lora_rlhf.hub` writes the full one (with eval figures) when publishing.

    A role with a scalar head also gets the code that scores with it without lora_rlhf.
    """
    text = (
        "---\n"
        f"base_model: {base_name}\n"
        "library_name: peft\n"
        "tags: [lora, rlhf, lora_rlhf]\n"
        "---\n\n"
        f"# {role} adapter\n\n"
        f"The `{role}` role of a lora_rlhf run on `{base_name}`.\n\n"
        "```python\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM\n\n"
        f'base = AutoModelForCausalLM.from_pretrained("{base_name}")\n'
        'model = PeftModel.from_pretrained(base, "path/to/this/folder")\n'
        "```\n"
    )
    return text if head is None else text + "\n" + "\n".join(head_usage(head.kind, base_name))
