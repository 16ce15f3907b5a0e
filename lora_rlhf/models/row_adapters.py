"""Every row of a batch under its own LoRA adapter, in two batched matmuls per layer (issue 15).

PEFT runs a mixed-adapter batch (`adapter_names`) by looping, in every LoRA layer, over the adapters present:
gather the adapter's rows, run its A and B, scatter-add the result. Those small ops cost more than the base
model's own matmuls on the CPU: a 16-row decoding step of the demo model over 3 adapters took 376 ms
through that loop against 214 ms for 16 rows of one adapter. Punica's BGMV (Chen et al. 2023, "Punica:
Multi-tenant LoRA serving") and S-LoRA (Sheng et al. 2023) instead gather each row's A and B and apply all of
them at once: `RowAdapters` adds, to each LoRA layer's base output, bmm(bmm(x, A[row]), B[row]) * scaling[row]
(a zero adapter for "base" rows, ranks padded with zeros), the same sum PEFT computes, in a fixed number of ops
whatever the number of adapters. Where the rows come in a few runs under one adapter each (PPO's scoring
stacks each role's copy of a micro-batch in one block), each run instead takes two plain matmuls with its
adapter's weights, as Punica's SGMV does, without a per-row copy of them.

It handles plain LoRA (PEFT's `lora_A` / `lora_B` / `scaling`, any base layer PEFT wraps: nn.Linear, GPT-2's
Conv1D, bitsandbytes 4- and 8-bit), unmerged, without gradients (its stacks are copies), where dropout does not
act (eval mode, or p = 0); `supports` says no for anything else (DoRA and other variants, embedding adapters),
and the caller keeps PEFT's own path. Used by the server's decoding steps and PPO's scoring passes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

BASE_ROW = "__base__"  # a row with no adapter, as PEFT names it
# Up to this many runs of consecutive rows under one adapter, each run's delta is two plain matmuls
# (`_segment_hook`); beyond, the per-row gather and bmm (`_delta_hook`) costs a fixed number of ops.
_MAX_RUNS = 4


class RowAdapters:
    """Per-row LoRA for the inference forwards of one PEFT model (its LoRA layers found once)."""

    def __init__(self, model: nn.Module) -> None:
        from peft.tuners.lora import LoraLayer

        self.layers: list[nn.Module] = [m for m in model.modules() if isinstance(m, LoraLayer)]
        # (adapter names) -> per layer (A (G + 1, in, r), B (G + 1, r, out) with scaling folded in), the last entry
        # zero for "base" rows; kept with the weights' versions, so an adapter changed in place is rebuilt.
        self._stacks: dict[tuple[str, ...], tuple[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]]] = {}

    def supports(self, adapters: Sequence[str]) -> bool:
        """Whether every layer can apply these adapters here: plain LoRA, unmerged, no embedding adapters."""
        wanted = set(adapters) - {BASE_ROW}
        for layer in self.layers:
            if getattr(layer, "merged", False) or wanted & set(getattr(layer, "lora_variant", {})):
                return False
            if wanted & set(getattr(layer, "lora_embedding_A", {})):
                return False
            for name in wanted & set(layer.lora_dropout):  # no dropout here: only where the layer's would not act
                dropout = layer.lora_dropout[name]
                if dropout.training and getattr(dropout, "p", 0.0) > 0:
                    return False
        return True

    @contextlib.contextmanager
    def applied(self, names: Sequence[str]) -> Iterator[None]:
        """Within the block, a forward of N rows runs row i under adapter `names[i]` (BASE_ROW: none): each LoRA
        layer's adapters are switched off and a forward hook adds the rows' deltas to its base output."""
        adapters = tuple(sorted(set(names) - {BASE_ROW}))
        stacks = self._stacked(adapters)
        position = {name: g for g, name in enumerate(adapters)}
        device = next((s[0].device for s in stacks if s is not None), None)
        groups = [position.get(n, len(adapters)) for n in names]
        runs = _runs(groups)
        rows = torch.tensor(groups, device=device)
        handles, disabled = [], []
        try:
            for layer, stack in zip(self.layers, stacks, strict=True):
                if stack is None:  # the layer carries none of these adapters: its base output is the answer
                    pass
                elif len(runs) <= _MAX_RUNS:
                    handles.append(layer.register_forward_hook(_segment_hook(stack[0], stack[1], runs, len(adapters))))
                else:
                    handles.append(layer.register_forward_hook(_delta_hook(stack[0][rows], stack[1][rows])))
                disabled.append(layer._disable_adapters)
                # PEFT's own switch (BaseTunerLayer._disable_adapters): the layer then returns its base output. Not
                # `disable_adapter_layers()`, which walks the whole model and also changes requires_grad.
                layer._disable_adapters = True
            yield
        finally:
            for handle in handles:
                handle.remove()
            for layer, was in zip(self.layers, disabled, strict=False):
                layer._disable_adapters = was

    def _stacked(self, adapters: tuple[str, ...]) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        versions = tuple(
            p._version
            for layer in self.layers
            for name in adapters
            if name in layer.lora_A
            for p in (layer.lora_A[name].weight, layer.lora_B[name].weight)
        )
        cached = self._stacks.get(adapters)
        if cached is not None and cached[0] == versions:
            return cached[1]
        stacks = [_layer_stack(layer, adapters) for layer in self.layers]
        self._stacks = {adapters: (versions, stacks)}  # one set at a time: the live batch's
        return stacks


def _layer_stack(layer: nn.Module, adapters: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(G + 1, in, r) A's and (G + 1, r, out) B's * scaling of `layer` for `adapters`, then a zero adapter (an
    adapter the layer does not carry is zero too; ranks padded with zeros to the largest); None if it carries none."""
    present = [n for n in adapters if n in layer.lora_A]
    if not present:
        return None
    rank = max(layer.lora_A[n].weight.shape[0] for n in present)
    template = layer.lora_A[present[0]].weight
    a = template.new_zeros(len(adapters) + 1, template.shape[1], rank)
    b = template.new_zeros(len(adapters) + 1, rank, layer.lora_B[present[0]].weight.shape[0])
    with torch.no_grad():
        for g, name in enumerate(adapters):
            if name in present:
                r = layer.lora_A[name].weight.shape[0]
                a[g, :, :r] = layer.lora_A[name].weight.T
                b[g, :r] = layer.lora_B[name].weight.T * layer.scaling[name]
    return a, b


def _runs(groups: Sequence[int]) -> list[tuple[int, int, int]]:
    """Row groups -> [(first row, end row, group)] of the maximal runs of consecutive equal groups."""
    runs: list[tuple[int, int, int]] = []
    for i, g in enumerate(groups):
        if runs and runs[-1][2] == g:
            runs[-1] = (runs[-1][0], i + 1, g)
        else:
            runs.append((i, i + 1, g))
    return runs


def _segment_hook(a: torch.Tensor, b: torch.Tensor, runs: list[tuple[int, int, int]], base: int):
    """A forward hook adding, to each run of rows under one adapter g, mm(mm(x[run], a[g]), b[g]) (Punica's SGMV).

    Where rows come in a few runs (PPO's scoring stacks each role's copy of the rows in one block) this reads
    each adapter's weights once, where `_delta_hook` gathers a copy per row and multiplies them with `bmm`s of
    rank-wide inner dimension (with the out-of-place add: 1.0 s of a profiled 5.7-s stacked scoring forward of
    24 rows; by runs it took 0.81x the CPU time).
    a (G + 1, in, r), b (G + 1, r, out); `base` is the group index of rows with no adapter (left as they are).
    Runs only without autograd (the output is updated in place), like everything RowAdapters does.
    """

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        if x.dim() != 3 or x.shape[0] != runs[-1][1]:
            raise RuntimeError(f"per-row adapters expect (rows, tokens, features) inputs, got {tuple(x.shape)}")
        for first, end, g in runs:
            if g != base:
                output[first:end] += torch.matmul(torch.matmul(x[first:end].to(a.dtype), a[g]), b[g]).to(output.dtype)
        return output

    return hook


def _delta_hook(a: torch.Tensor, b: torch.Tensor):
    """A forward hook adding (N, S, out) bmm(bmm(x, a), b) to the layer's base output; a (N, in, r), b (N, r, out)."""

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        if x.dim() != 3 or x.shape[0] != a.shape[0]:
            raise RuntimeError(f"per-row adapters expect (rows, tokens, features) inputs, got {tuple(x.shape)}")
        delta = torch.bmm(torch.bmm(x.to(a.dtype), a), b)
        return output + delta.to(output.dtype)

    return hook
