"""Measured peaks to check the plan against: allocator-level bytes, never RSS.

On CUDA, `torch.cuda.max_memory_allocated`. On the CPU, torch.profiler's memory timeline: every tensor
allocation and free the CPU allocator makes while profiling, so the peak of their running sum is the
allocated-bytes peak of the block (tensors that existed before it, such as the weights, are counted
separately by `resident_bytes`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
from torch import nn


@dataclasses.dataclass
class Peak:
    bytes: int = 0  # the block's allocated-bytes peak above what was allocated when it started


@contextlib.contextmanager
def allocated_peak(device: torch.device | str = "cpu") -> Iterator[Peak]:
    """Measure the peak of bytes allocated by the block above its starting point (see the module docstring)."""
    device = torch.device(device)
    result = Peak()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result.bytes = torch.cuda.max_memory_allocated(device) - start
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        yield result
    current = peak = 0
    for _, action, _, nbytes in prof._memory_profile().timeline:  # (time, action, (key, version), bytes)
        name = getattr(action, "name", str(action))
        if name == "CREATE":
            current += nbytes
        elif name == "DESTROY":
            current -= nbytes
        peak = max(peak, current)
    result.bytes = peak


def resident_bytes(*modules: nn.Module, optimizers: tuple[torch.optim.Optimizer, ...] = ()) -> int:
    """Bytes held by the modules' parameters and buffers (each storage once) and the optimizers' states."""
    seen: set[int] = set()
    total = 0
    tensors = [t for m in modules for t in list(m.parameters()) + list(m.buffers())]
    tensors += [p.grad for m in modules for p in m.parameters() if p.grad is not None]
    for opt in optimizers:
        tensors += [v for state in opt.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    # bitsandbytes keeps each 4-bit layer's quantization state (absmax, nested absmax) beside the weight.
    for module in modules:
        for sub in module.modules():
            state = getattr(getattr(sub, "weight", None), "quant_state", None)
            if state is None:
                continue
            for tensor in _quant_state_tensors(state):
                if tensor.untyped_storage().data_ptr() not in seen:
                    seen.add(tensor.untyped_storage().data_ptr())
                    total += tensor.untyped_storage().nbytes()
    return total


def _quant_state_tensors(state) -> list[torch.Tensor]:
    out = [t for t in (getattr(state, "absmax", None), getattr(state, "code", None)) if isinstance(t, torch.Tensor)]
    nested = getattr(state, "state2", None)
    if nested is not None:
        out += _quant_state_tensors(nested)
    return out
