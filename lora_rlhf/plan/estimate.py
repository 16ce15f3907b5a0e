"""The arithmetic of the memory plan: pure functions from sizes to bytes.

Each term is one of the things that occupy memory while a stage runs (QLoRA, Dettmers et al. 2023, §2
counts the first three; the rest are what PPO adds):

    base weights     decoder-layer linears at their quantization, everything else in the compute dtype
    adapters, heads  every resident role's LoRA matrices and scalar heads (fp32, as PEFT keeps them)
    trained state    fp32 gradients and AdamW's two moments of the trained roles' parameters
    activations      what autograd keeps for backward (all layers, or layer inputs + one layer when
                     gradient checkpointing recomputes them), or one layer's worth without grad
    log-prob chunk   fp32 logits of `LOGPROB_CHUNK` positions (models/logprobs.py): logits, log-softmax, gradient
    KV cache         keys and values of every generated row, every layer, every position
    runtime          a stated allowance: CUDA context, cuBLAS workspace, allocator fragmentation

Activations per token and layer, in elements (validated on the CPU in docs/benchmarks.md):
    sum of the layer's linear outputs + their inputs again where LoRA dropout copies them (in fp32 on the
    CPU, where PEFT casts them to the fp32 adapter's dtype first: `lora_input_dtype`)
    + 8 H (two RMS/LayerNorms kept in fp32, rotary q and k, attention output) + kv + the MLP's activation
    (and its product with the up projection in a gated MLP): 2 I gated, I plain, with H the hidden size,
    kv the key width and I the widest linear output. Without grad only one layer's tensors live at a
    time: 3 I (gated) or 2 I, + 4 H per token.
"""

from __future__ import annotations

import dataclasses

from lora_rlhf.plan.shapes import ModelShape

GiB = 1024**3
# Bytes per weight of a quantized linear. NF4 with double quantization (QLoRA §2): 4 bits, an 8-bit absmax
# per 64 weights and an fp32 second-level constant per 256 blocks; int8 (LLM.int8()): one byte + a row scale.
QUANT_BYTES = {"nf4": 0.5 + 1 / 64 + 4 / (64 * 256), "nf4-single": 0.5 + 4 / 64, "int8": 1.0}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ADAM_BYTES = 4 + 8  # fp32 gradient + AdamW's exp_avg and exp_avg_sq
LOGIT_COPIES_GRAD = 3  # fp32 logits, their log-softmax, and the gradient flowing back through them
LOGIT_COPIES_NO_GRAD = 3  # logits, log-softmax, and the p * log p of the entropy PPO logs


@dataclasses.dataclass(frozen=True)
class PhaseMemory:
    """One phase's predicted peak, term by term, in bytes."""

    name: str
    base: int
    adapters: int
    trained_state: int
    activations: int
    logits: int
    kv_cache: int
    runtime: int

    @property
    def total(self) -> int:
        return (
            self.base
            + self.adapters
            + self.trained_state
            + self.activations
            + self.logits
            + self.kv_cache
            + self.runtime
        )


def held_dtype(quantization: str, compute_dtype: str) -> str:
    """The dtype of a base's unquantized weights and of its activations, KV cache and logits.

    The compute dtype, except for a 4-/8-bit base computing in fp16: PEFT's `prepare_model_for_kbit_training`
    (models/base.py `prepare_for_training`) upcasts its unquantized weights (embeddings, norms, LM head) to fp32,
    so its residual stream is fp32 and bitsandbytes casts each linear's output back to its input's dtype; only
    the matmuls run in fp16. A bf16 base is not upcast (measured on the CPU: docs/benchmarks.md, "at the real
    shapes", where an upcast bf16 NF4 model peaked at the fp32 one's bytes).
    """
    return "float32" if quantization in QUANT_BYTES and compute_dtype == "float16" else compute_dtype


def base_weight_bytes(shape: ModelShape, quantization: str, compute_dtype: str) -> int:
    """The base model's weights: quantized linears plus the rest (embeddings, norms, LM head) in `held_dtype`."""
    other = shape.other_params * DTYPE_BYTES[held_dtype(quantization, compute_dtype)]
    if quantization in ("none", ""):
        return shape.linear_params * DTYPE_BYTES[compute_dtype] + other
    return int(shape.linear_params * QUANT_BYTES[quantization]) + other


def adapter_bytes(shape: ModelShape, r: int, roles: int, heads: int) -> int:
    """`roles` LoRA adapters of rank `r` on every decoder linear and `heads` scalar heads, all fp32."""
    return roles * shape.lora_params(r) * 4 + heads * (shape.hidden + 1) * 4


def trained_state_bytes(shape: ModelShape, r: int, roles: int, heads: int) -> int:
    """Gradients and AdamW moments of `roles` trained adapters (+ their `heads`)."""
    return (roles * shape.lora_params(r) + heads * (shape.hidden + 1)) * ADAM_BYTES


def layer_elements_per_token(shape: ModelShape, lora_dropout: bool) -> int:
    """Elements autograd keeps per token in one decoder layer (see the module docstring)."""
    outputs = sum(fan_out for _, fan_out in shape.layer_linears)
    dropout_copies = sum(fan_in for fan_in, _ in shape.layer_linears) if lora_dropout else 0
    mlp = (2 if shape.gated_mlp else 1) * shape.widest  # activation (and, gated, its product with up)
    return outputs + dropout_copies + 8 * shape.hidden + shape.kv_dim + mlp


def lora_input_dtype(device: str, dtype: str) -> str:
    """The dtype of the copy LoRA dropout makes of a layer's input (`dtype`: the base's held dtype).

    PEFT casts a LoRA layer's input to its adapter's dtype (fp32) before `lora_dropout` unless autocast is on, and
    the stages autocast on CUDA only (train/loop.py `make_accelerator`): on the CPU a bf16 base's dropout copies
    are fp32 (measured: docs/benchmarks.md, "at the real shapes"), on CUDA they stay in the input's dtype.
    """
    return dtype if device == "cuda" else "float32"


def layer_peak_no_grad_elements(shape: ModelShape) -> int:
    """Elements per token alive at once inside one layer without grad: the MLP's widest tensors + 4 H."""
    return (3 if shape.gated_mlp else 2) * shape.widest + 4 * shape.hidden


def activation_bytes(
    shape: ModelShape,
    rows: int,
    tokens: int,
    dtype: str,
    *,
    grad: bool,
    checkpointing: bool,
    lora_dropout: bool,
    dropout_dtype: str | None = None,
) -> int:
    """Activations of a forward over rows x tokens: kept for backward when `grad`, else one layer at a time.

    LoRA dropout's copies of the layers' inputs are counted in `dropout_dtype` (`lora_input_dtype`; default `dtype`).
    """
    hidden = rows * tokens * shape.hidden * DTYPE_BYTES[dtype]
    if not grad:  # one layer's transient intermediates and the hidden states it hands on
        return rows * tokens * layer_peak_no_grad_elements(shape) * DTYPE_BYTES[dtype] + hidden
    per_token = layer_elements_per_token(shape, False) * DTYPE_BYTES[dtype]
    if lora_dropout:
        inputs = layer_elements_per_token(shape, True) - layer_elements_per_token(shape, False)
        per_token += inputs * DTYPE_BYTES[dropout_dtype or dtype]
    per_layer = rows * tokens * per_token
    if checkpointing:
        return shape.layers * hidden + per_layer  # every layer's input, plus the one being recomputed
    return shape.layers * per_layer + hidden


def logit_bytes(shape: ModelShape, rows: int, positions: int, *, grad: bool) -> int:
    """fp32 logits of a chunk of `positions` per row, with the copies log-softmax (and backward) make."""
    copies = LOGIT_COPIES_GRAD if grad else LOGIT_COPIES_NO_GRAD
    return rows * positions * shape.vocab * 4 * copies


def kv_cache_bytes(shape: ModelShape, rows: int, tokens: int, dtype: str) -> int:
    """Keys and values of `rows` sequences of `tokens` positions, every layer."""
    return 2 * rows * tokens * shape.layers * shape.kv_dim * DTYPE_BYTES[dtype]


def runtime_bytes(device: str, subtotal: int) -> int:
    """Allowance for what no tensor accounts for: 0.5 GiB of CUDA context + 10% fragmentation on a GPU.

    On the CPU the plan is compared with allocator-level measurements, which carry no such overhead.
    """
    return int(0.5 * GiB + 0.10 * subtotal) if device == "cuda" else 0
