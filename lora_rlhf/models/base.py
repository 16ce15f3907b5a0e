"""Load the one base model (NF4, int8 or unquantized) and its tokenizer.

Every role of a run is a LoRA adapter on the model this module returns, so it is loaded exactly once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from lora_rlhf.errors import LoraRlhfError

logger = logging.getLogger(__name__)

Quantization = Literal["auto", "nf4", "int8", "none"]
DType = Literal["auto", "bfloat16", "float16", "float32"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclasses.dataclass
class BaseModelConfig:
    """How to load the shared base model."""

    # Local folder or Hugging Face Hub id of any causal LM.
    name_or_path: str = ""
    # "nf4" (QLoRA's 4-bit NormalFloat), "int8", or "none"; "auto" is nf4 on CUDA, none elsewhere.
    quantization: Quantization = "auto"
    # dtype of the matmuls (and of the weights when unquantized); "auto": bf16 on CUDA if supported, else fp32.
    compute_dtype: DType = "auto"
    # "auto": cuda if available, else cpu. Any torch device string otherwise.
    device: str = "auto"
    # Recompute activations in backward to fit long sequences (switched off while generating).
    gradient_checkpointing: bool = False
    # Executing a model repository's own Python code is opt-in.
    trust_remote_code: bool = False
    # Hub revision (branch, tag or commit) of the model.
    revision: str | None = None
    # Name of a GGUF file inside `name_or_path` (dequantized by transformers on load).
    gguf_file: str | None = None
    # NF4 double quantization (QLoRA §2): quantizes the quantization constants too.
    double_quant: bool = True
    # A 4-bit base decodes (PPO rollouts, eval, the demo's rankings) with its weights dequantized once per call
    # instead of at every new token, where that copy fits (models/dequantized.py). "auto": on the CPU, where
    # bitsandbytes dequantizes for every batched matmul; not on CUDA, where its fused 4-bit kernel serves
    # decoding's small batches (the copy is unmeasured there). true: on any device; false: never.
    dequantized_decoding: bool | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        if self.quantization not in ("auto", "nf4", "int8", "none"):
            raise LoraRlhfError(f"quantization: {self.quantization!r} is not one of auto, nf4, int8, none")
        if self.compute_dtype not in ("auto", *_DTYPES):
            raise LoraRlhfError(f"compute_dtype: {self.compute_dtype!r} is not one of auto, {', '.join(_DTYPES)}")
        if self.dequantized_decoding not in (True, False, "auto"):
            raise LoraRlhfError(f"dequantized_decoding: {self.dequantized_decoding!r} is not one of true, false, auto")
        self._check_device()

    def _check_device(self) -> None:
        """A device torch knows and this machine has (issue 12: `banana` and `cuda` without CUDA were tracebacks)."""
        if self.device == "auto":
            return
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError):
            raise LoraRlhfError(
                f"device: {self.device!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise LoraRlhfError(f"device: {self.device!r} asked for, but CUDA is not available on this machine")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise LoraRlhfError(f"device: {self.device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise LoraRlhfError(f"device: {self.device!r} asked for, but MPS is not available on this machine")

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_quantization(self) -> str:
        return resolve_quantization(self.quantization, self.resolved_device().type)

    def resolved_dtype(self) -> torch.dtype:
        if self.compute_dtype != "auto":
            return _DTYPES[self.compute_dtype]
        device = self.resolved_device()
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return _DTYPES[resolve_compute_dtype(self.compute_dtype, device.type, bf16_supported=bf16)]


def resolve_quantization(quantization: str, device_type: str) -> str:
    """`model.quantization` on a device of `device_type` ("cuda", "cpu", ...): "auto" is nf4 on CUDA, where
    bitsandbytes' kernels run, and none elsewhere. `lora-rlhf plan` resolves it by this rule too."""
    if quantization == "auto":
        return "nf4" if device_type == "cuda" else "none"
    return quantization


def resolve_compute_dtype(compute_dtype: str, device_type: str, *, bf16_supported: bool) -> str:
    """`model.compute_dtype`'s name on a device of `device_type`: "auto" is bfloat16 on a CUDA device that supports
    it, else float32. `lora-rlhf plan` resolves it by this rule too."""
    if compute_dtype != "auto":
        return compute_dtype
    return "bfloat16" if device_type == "cuda" and bf16_supported else "float32"


def resolve_model_source(name_or_path: str) -> str:
    """Return `name_or_path` if it is an existing folder or a plausible Hub id, else raise a one-line error."""
    if not name_or_path:
        raise LoraRlhfError("model.name_or_path is empty: give a local model folder or a Hub id")
    path = Path(os.path.expanduser(name_or_path))
    if path.is_dir():
        return str(path)
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local or not _HUB_ID.match(name_or_path):
        raise LoraRlhfError(f"model path {name_or_path!r} does not exist")
    return name_or_path


def _quantization_config(quantization: str, dtype: torch.dtype, double_quant: bool = True):
    from transformers import BitsAndBytesConfig

    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_tokenizer(config: BaseModelConfig):
    """The base's tokenizer with a pad token and left padding (what batched generation needs)."""
    from transformers import AutoTokenizer

    source = resolve_model_source(config.name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source,
            revision=config.revision,
            trust_remote_code=config.trust_remote_code,
            gguf_file=config.gguf_file,
        )
    except (OSError, ValueError) as exc:
        raise LoraRlhfError(f"could not load the tokenizer of {source!r}: {_first_line(exc)}") from exc
    if tokenizer.pad_token is None:
        # Padding is always masked out, so any existing special token can stand in for it.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if tokenizer.pad_token is None:
        raise LoraRlhfError(f"the tokenizer of {source!r} has no pad, eos or unk token to pad with")
    tokenizer.padding_side = "left"
    return tokenizer


def load_base_model(config: BaseModelConfig):
    """Load the causal LM once, quantized as configured, prepared for LoRA training.

    Returns a `transformers.PreTrainedModel` whose weights are frozen; adapters add the trainable part.
    """
    from transformers import AutoModelForCausalLM

    source = resolve_model_source(config.name_or_path)
    device = config.resolved_device()
    dtype = config.resolved_dtype()
    quantization = config.resolved_quantization()
    quant_config = _quantization_config(quantization, dtype, config.double_quant)
    logger.info("loading %s (%s, compute %s) on %s", source, quantization, dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            revision=config.revision,
            trust_remote_code=config.trust_remote_code,
            gguf_file=config.gguf_file,
            quantization_config=quant_config,
            dtype=dtype,
            device_map={"": device},
        )
    except (OSError, ValueError) as exc:
        raise LoraRlhfError(f"could not load model {source!r}: {_first_line(exc)}") from exc
    return prepare_for_training(
        model, quantized=quant_config is not None, gradient_checkpointing=config.gradient_checkpointing
    )


def keep_nf4_differentiable(model: nn.Module) -> int:
    """Turn off bitsandbytes' CPU repacking in every Linear4bit of `model`; returns how many layers it touched.

    bitsandbytes 0.50's `Linear4bit.forward` repacks its weight for a CPU inference kernel (`gemv_4bit`)
    the first time it runs in eval mode on inputs without grad (a held-out evaluation, a rollout, the RM
    bias step). `gemv_4bit` has no autograd kernel and the repack rewrites the weights in place, so from
    then on layers with a bias (gpt2, starcoder2) fail in training ("a view of a leaf Variable that
    requires grad is being used in an in-place operation") and bias-free ones get wrong LoRA gradients
    (measured on a tiny NF4 Llama: layer-0 lora_A grad norm 5.1e-3 before one no-grad eval forward,
    1.4e-3 after). Switching the repack off keeps every forward on the differentiable path; it is called
    when a base is loaded and when a RoleStack wraps a model, so stacks built in Python are safe too.
    """
    touched = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            touched += 1
    return touched


def _contiguous_input(module: nn.Module, args: tuple) -> tuple | None:
    if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


def keep_head_input_contiguous(model: nn.Module) -> bool:
    """Give `model`'s LM head a contiguous input, so a bf16 head is never copied once per row; returns whether
    a hook was added (once per head).

    The head is fed slices of the hidden states: the last position of each row when `generate` prefills
    (transformers' `hidden_states[:, -1:]`), the response positions when log-probs are taken
    (`states[:, p - 1 : -1]`). `nn.Linear` on such a (B, T, H) view cannot fold it into one (B*T, H) matrix, so
    `torch.matmul` broadcasts the weight to (B, H, V) and calls `bmm`, and the CPU's bf16 `bmm` makes that
    broadcast contiguous: B copies of the (V, H) weight, forward and backward (measured with torch 2.13's CPU
    kernels; fp32 and fp16 use the broadcast in place; CUDA unmeasured). At Llama-3.1-8B's 128256 x 4096 head that
    is 0.98 GiB a row: 2-3.5 GiB over the plan in the sft step and PPO's generate and score (docs/benchmarks.md,
    "at the real shapes"). The contiguous copy of the (B, T, H) input is H/V of the logits it produces, and the
    product is the same (tests/test_real_shapes.py compares the logits and LoRA gradients of both).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Module) or getattr(head, "_lora_rlhf_contiguous_input", False):
        return False
    head.register_forward_pre_hook(_contiguous_input)
    head._lora_rlhf_contiguous_input = True
    return True


def prepare_for_training(model, *, quantized: bool, gradient_checkpointing: bool):
    """Freeze the base and, if asked, turn on gradient checkpointing (with PEFT's k-bit preparation when quantized).

    PEFT's `prepare_model_for_kbit_training` also upcasts every fp16/bf16 parameter that is not quantized
    (embeddings, norms, LM head) to fp32, which makes the residual stream, the KV cache and the logits fp32 too
    (bitsandbytes casts each 4-bit linear's output back to its input's dtype): +12 GiB of KV cache for the
    Llama-3.1-8B recipe's rollouts (docs/benchmarks.md, "at the real shapes"). The upcast guards fp16, whose
    range overflows; bf16 has fp32's range, so a bf16 base is prepared as an unquantized one is (frozen, inputs
    requiring grad under checkpointing) and stays bf16, as QLoRA's bf16 recipes keep their embeddings and head.
    """
    keep_nf4_differentiable(model)
    keep_head_input_contiguous(model)
    if quantized and held_in_fp32(model):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    else:
        for param in model.parameters():
            param.requires_grad_(False)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            # Inputs must carry grad so checkpointed blocks see a graph when only adapters train.
            model.enable_input_require_grads()
    model.config.use_cache = not gradient_checkpointing
    return model


def held_in_fp32(model: nn.Module) -> bool:
    """Whether PEFT's k-bit preparation would upcast `model`'s unquantized weights: yes unless they are bf16."""
    dtypes = {p.dtype for p in model.parameters() if p.dtype.is_floating_point}
    return dtypes != {torch.bfloat16}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def gradient_checkpointing_on(model: nn.Module) -> bool:
    """Whether `model` (a transformers model) recomputes activations in backward: `is_activation_checkpointing`
    in transformers 5.x (`is_gradient_checkpointing`, which warns there, before). Walks every module: call it once
    per pass, not per step."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False
