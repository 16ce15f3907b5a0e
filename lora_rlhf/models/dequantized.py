"""Decoding from a 4-bit base with its weights dequantized once per call, not once per token (issue 15).

On the CPU a bitsandbytes 4-bit linear multiplies by dequantizing its weight to the compute dtype and
running a plain matmul (`gemm_4bit`'s default kernel), then drops the copy. Decoding runs every layer once per
new token, so a rollout of 32 tokens dequantizes the whole base 32 times: on the demo model in NF4 that was
18% of a rollout's generation time on the CPU (torch profiler: `dequantize_4bit` + `dequantize_blockwise`,
2.2 s of 12.2 s).

`dequantized_linears` dequantizes each 4-bit linear on its first call inside the block, with bitsandbytes' own
`dequantize_4bit`, keeps that weight, and multiplies by it with the `linear` bitsandbytes' CPU path would
have run (the same numbers), until the block ends and the copies are freed. It costs the base's weights at the
compute dtype for the length of the call (405 MiB for the 135M demo model in fp32, 13 GiB for an 8B in bf16),
so `engine.sample` (models/engine.py) uses it only where it takes at most half the memory left free at the
call once the KV cache of its rows is set aside (`copy_fits`): on a 24 GB GPU carrying an 8B base it would
not. By default (`model.dequantized_decoding: auto`) only on the CPU: on CUDA bitsandbytes 0.50 multiplies batches
of up to 1,536 rows with a fused kernel that reads the 4-bit weights, which may well beat a dense matmul by a 16-bit
copy for decoding's small batches (unmeasured: no GPU was lent to this project). `lora-rlhf plan` counts
the copy by the same rules (plan/phases.py).

Nothing here runs with gradients (generation only), and modules it cannot reproduce keep their own forward:
bitsandbytes' packed CPU format, accelerate's dispatch hooks (offloaded or split models).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

from lora_rlhf.models.config_sizes import kv_dim_of


def _four_bit_linears(model: nn.Module) -> list[nn.Module]:
    """The bitsandbytes 4-bit linears of `model` whose forward `dequantized_linears` can stand in for."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:  # bitsandbytes is optional where nothing is quantized
        return []
    return [
        m
        for m in model.modules()
        if isinstance(m, Linear4bit)
        and getattr(m.weight, "quant_state", None) is not None
        and not getattr(m.weight.quant_state, "packing_format_for_cpu", False)
        and not hasattr(m, "_hf_hook")
    ]


def dequantized_bytes(model: nn.Module) -> int:
    """Bytes the dequantized copies of `model`'s 4-bit linears take at their compute dtype (0 if none)."""
    return sum(m.out_features * m.in_features * _compute_dtype(m).itemsize for m in _four_bit_linears(model))


def _compute_dtype(module: nn.Module) -> torch.dtype:
    return module.compute_dtype or module.weight.quant_state.dtype


def free_bytes(device: torch.device) -> int:
    """Memory free for new tensors on `device`: CUDA's free memory plus what torch's cache holds unused; on the CPU
    this process's share of what the system can still hand out (psutil's `available`, split between the
    LOCAL_WORLD_SIZE processes a launcher started on this machine, which all decode at once)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    import psutil

    return psutil.virtual_memory().available // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def kv_cache_bytes(model: nn.Module, rows: int, tokens: int) -> int:
    """What the KV cache of `rows` sequences of `tokens` positions takes: keys and values of every layer."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    itemsize = model.get_input_embeddings().weight.dtype.itemsize  # the activations' dtype, so the cache's
    return 2 * rows * tokens * int(config.num_hidden_layers) * kv_dim_of(config) * itemsize


def wants_dequantized_copy(asked: bool | str, device_type: str) -> bool:
    """Whether `model.dequantized_decoding` (True, False or "auto") asks for the copy on a device of `device_type`:
    True anywhere, "auto" on the CPU only (see the module docstring)."""
    return asked is True or (asked == "auto" and device_type == "cpu")


def copy_fits(copy_bytes: int, device: torch.device, working_bytes: int = 0) -> bool:
    """`copy_fits_in` the memory free on `device` now."""
    return copy_fits_in(copy_bytes, free_bytes(device), working_bytes)


def copy_fits_in(copy_bytes: int, free: int, working_bytes: int = 0) -> bool:
    """Whether a copy of `copy_bytes` takes at most half of `free` bytes once decoding has its `working_bytes` (its
    KV cache): the other half is the margin for what no estimate counts (logits, activations, the allocator's
    fragmentation)."""
    return copy_bytes <= (free - working_bytes) // 2


@contextlib.contextmanager
def dequantized_linears(model: nn.Module) -> Iterator[None]:
    """Within the block, each 4-bit linear of `model` multiplies by its weight dequantized once (see the module
    docstring); on leaving, the modules get their own forward back and the copies are freed. No gradients."""
    modules = _four_bit_linears(model)
    saved = [m.__dict__.get("forward") for m in modules]
    try:
        for module in modules:
            module.forward = _DequantizedForward(module)
        yield
    finally:
        for module, forward in zip(modules, saved, strict=False):
            if forward is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = forward


class _DequantizedForward:
    """`Linear4bit.forward` for inputs without gradients, with the weight dequantized on the first call and kept:
    cast the input to the compute dtype, `linear` by the dequantized weight (and bias), cast back, as bitsandbytes'
    `gemm_4bit` does on the CPU."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.weight: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        module = self.module
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("dequantized 4-bit linears run without gradients (they serve decoding only)")
        dtype = module.compute_dtype or x.dtype
        if self.weight is None or self.weight.dtype != dtype:
            self.weight = _dequantize(module.weight, dtype)
        bias = module.bias.to(dtype) if module.bias is not None else None
        return torch.nn.functional.linear(x.to(dtype), self.weight, bias).to(x.dtype)


def _dequantize(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(out, in) weight at `dtype` from a 4-bit `Params4bit`, by the ops bitsandbytes' `gemm_4bit` calls (double
    quantization: the 8-bit block scales first), so the copy holds exactly the weight its matmul would use."""
    state = weight.quant_state
    absmax = state.absmax
    if state.nested:
        absmax = (
            torch.ops.bitsandbytes.dequantize_blockwise.default(
                state.absmax, state.state2.absmax, state.state2.code, state.state2.blocksize, torch.float32
            )
            + state.offset
        )
    return torch.ops.bitsandbytes.dequantize_4bit.default(
        weight.data.view(-1, 1), absmax, state.blocksize, state.quant_type, state.shape, dtype
    )
