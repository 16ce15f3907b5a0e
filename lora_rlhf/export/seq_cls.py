"""A base model as transformers' `*ForSequenceClassification` carrying lora_rlhf's scalar reward head.

The reward role is `w · h_last + b` (models/heads.py): `h_last` the backbone's last hidden state at each row's
last non-pad token. `*ForSequenceClassification` computes `score(h)` at the last token that is not
`config.pad_token_id`, so with `score.weight = w` and a pad token that never ends a scored row it is the same
number, up to `b`. Most decoder classes build `score` without a bias (`nn.Linear(H, 1, bias=False)`, and no
config option adds one), so `b` goes where it stays exact:

- `score.bias`, where the class has one;
- else the final LayerNorm's bias, where the backbone ends in a LayerNorm with a bias (GPT-2's `ln_f`,
  GPT-NeoX's `final_layer_norm`): its output feeds `score` alone in this class, and adding `b · w / (w · w)`
  to that bias adds exactly `b` to `w · h`;
- else (RMSNorm bases: Llama, Qwen2, Mistral, ...) nowhere: the exported scores are lower by `b`, which is
  recorded as `config.lora_rlhf_reward_offset` (and in the card). A constant shift changes no ranking and no
  GRPO/RLOO advantage (both subtract a per-prompt mean), but it does change raw scores.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal

import torch
from torch import nn

from lora_rlhf.errors import LoraRlhfError

logger = logging.getLogger(__name__)

BiasMode = Literal["auto", "fold", "drop"]
BIAS_MODES: tuple[str, ...] = ("auto", "fold", "drop")
# Names transformers gives the LayerNorm that ends a decoder backbone, by family.
_FINAL_NORMS = ("ln_f", "final_layer_norm", "final_layernorm", "norm_f", "norm")
# Names of the classification layer in *ForSequenceClassification classes.
_SCORE_NAMES = ("score", "classifier")
# Config attribute holding what to add to the exported logits to get lora_rlhf's scores (0 when exact).
OFFSET_KEY = "lora_rlhf_reward_offset"


@dataclasses.dataclass(frozen=True)
class BiasPlacement:
    """Where the head's bias went: `where` is "score.bias", a module's bias, "none" (b == 0) or "dropped"."""

    value: float  # the head's bias b
    where: str
    offset: float  # add to the exported logits to get lora_rlhf's scores: b when dropped, else 0


def sequence_classification_class(config) -> type:
    """The `*ForSequenceClassification` class of `config`'s architecture, or a one-line LoraRlhfError."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    name = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.get(config.model_type)
    if name is None or not hasattr(transformers, name):
        raise LoraRlhfError(
            f"architecture {config.model_type!r} has no ForSequenceClassification class in transformers "
            f"{transformers.__version__}: the reward model cannot be exported as a standard checkpoint"
        )
    return getattr(transformers, name)


def load_sequence_classifier(
    source: str, dtype: torch.dtype, *, revision: str | None, trust_remote_code: bool, gguf_file: str | None = None
):
    """`source` (a causal LM checkpoint) loaded unquantized in `dtype` as its `*ForSequenceClassification`.

    The backbone's weights come from the checkpoint (the LM head is left out) and `score` (1 label) is
    replaced by the reward head afterwards. A run trained on an NF4 base is exported from the checkpoint's
    own 16/32-bit weights, reloaded here: dequantizing the NF4 copy would bake its 4-bit rounding in. Only a
    checkpoint that is itself stored quantized is dequantized (as `lora-rlhf merge` does).
    """
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            source, revision=revision, trust_remote_code=trust_remote_code, gguf_file=gguf_file
        )
    except (OSError, ValueError) as exc:
        raise LoraRlhfError(f"could not load the config of base model {source!r}: {_first_line(exc)}") from exc
    cls = sequence_classification_class(config)
    transformers_logger = logging.getLogger("transformers.modeling_utils")
    level = transformers_logger.level
    transformers_logger.setLevel(logging.ERROR)  # "score.weight newly initialized": it is set from the head next
    try:
        model = cls.from_pretrained(
            source,
            num_labels=1,
            dtype=dtype,
            revision=revision,
            trust_remote_code=trust_remote_code,
            gguf_file=gguf_file,
        )
    except (OSError, ValueError) as exc:
        raise LoraRlhfError(f"could not load base model {source!r}: {_first_line(exc)}") from exc
    finally:
        transformers_logger.setLevel(level)
    if getattr(model, "hf_quantizer", None) is not None:
        model = model.dequantize().to(dtype)
    return model.eval()


def score_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """(name, module) of the classification layer of a `*ForSequenceClassification` with one label."""
    for name in _SCORE_NAMES:
        module = getattr(model, name, None)
        if isinstance(module, nn.Linear) and module.out_features == 1:
            return name, module
    raise LoraRlhfError(f"{type(model).__name__} has no one-label `score` layer to carry the reward head")


def final_layer_norm(model: nn.Module) -> tuple[str, nn.LayerNorm] | None:
    """(dotted name, module) of the LayerNorm with a bias that ends the backbone, or None (RMSNorm, no bias)."""
    backbone = model.base_model
    prefix = model.base_model_prefix
    for name in _FINAL_NORMS:
        module = getattr(backbone, name, None)
        if isinstance(module, nn.LayerNorm) and module.bias is not None:
            return f"{prefix}.{name}" if backbone is not model else name, module
    return None


@torch.no_grad()
def install_head(model: nn.Module, weight: torch.Tensor, bias: float, mode: BiasMode = "auto") -> BiasPlacement:
    """Set `score` to the reward head: `weight` (1, H) float32, `bias` b; see the module docstring for b.

    `mode`: "auto" puts b where it is exact, else drops it (recorded); "fold" raises where it cannot be
    exact; "drop" always leaves it out. Returns where b went.
    """
    if mode not in BIAS_MODES:
        raise LoraRlhfError(f"bias: {mode!r} is not one of {', '.join(BIAS_MODES)}")
    name, score = score_layer(model)
    score.weight.copy_(weight.to(score.weight.dtype))
    if score.bias is not None:
        score.bias.zero_()
    placement = _place_bias(model, name, score, weight.float().reshape(-1), float(bias), mode)
    setattr(model.config, OFFSET_KEY, placement.offset)
    return placement


def _place_bias(model: nn.Module, name: str, score: nn.Linear, w: torch.Tensor, b: float, mode: str) -> BiasPlacement:
    if b == 0.0:
        return BiasPlacement(b, "none", 0.0)
    if mode == "drop":
        return BiasPlacement(b, "dropped", b)
    if score.bias is not None:
        score.bias.fill_(b)
        return BiasPlacement(b, f"{name}.bias", 0.0)
    norm = final_layer_norm(model)
    norm_ok = norm is not None and float(w @ w) > 0.0
    if norm_ok:
        norm_name, module = norm
        # w · (beta + b w / |w|^2) = w · beta + b: the norm's output feeds `score` alone.
        shift = (b / float(w @ w)) * w.double()
        module.bias.copy_((module.bias.double() + shift.to(module.bias.device)).to(module.bias.dtype))
        return BiasPlacement(b, f"{norm_name}.bias", 0.0)
    if mode == "fold":
        raise LoraRlhfError(
            f"{type(model).__name__}'s `{name}` has no bias and its backbone ends in no LayerNorm with one: the "
            f"head's bias {b:g} cannot be folded in exactly; pass --bias drop (or auto) to export scores lower "
            f"by {b:g}, recorded as config.{OFFSET_KEY}"
        )
    logger.warning(
        "%s cannot carry the reward head's bias %g (no score bias, no final LayerNorm bias): exported scores are "
        "lower by %g than lora_rlhf's, recorded as config.%s",
        type(model).__name__,
        b,
        b,
        OFFSET_KEY,
    )
    return BiasPlacement(b, "dropped", b)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
