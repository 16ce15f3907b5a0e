"""Data parallelism over the processes `accelerate launch` (or torchrun) started: who am I, my shard, and the
few collectives a stage needs (issue 13).

Every process holds the whole stack (one base, every role's adapter); it computes on its shard of each
global batch and the trained role's gradients are summed across processes after backward. The
communication is torch.distributed's (NCCL on GPUs, gloo on CPUs), set up by accelerate's PartialState.
Nothing is wrapped in DistributedDataParallel: DDP over the multi-adapter PeftModel sees the frozen roles'
parameters, whose `requires_grad` PEFT's `set_adapter` flips, as unused ("Expected to have finished
reduction ..."), and it breaks on two forwards through the same checkpointed layers (PPO's policy and
value); reducing only the trained role's gradients avoids both and sends only LoRA gradients.

With one process every helper returns at once and touches no tensor, so a single-process run computes
exactly what it did before this module existed.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import functools
import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import torch

from lora_rlhf.errors import LoraRlhfError

T = TypeVar("T")
logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the launched ones."""

    rank: int  # 0 .. size - 1 over every node
    size: int  # number of processes (world size)
    local_rank: int  # rank on this node: the GPU this process drives

    @property
    def is_main(self) -> bool:
        """The process that writes the run directory, logs metrics and prints."""
        return self.rank == 0


def launched_size() -> int:
    """The world size the launcher announced in the environment (1 when started as a plain command)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


@functools.cache
def world() -> World:
    """This process's World; joins the process group (through accelerate's PartialState) on first use.

    On a machine without CUDA the group uses gloo (PartialState(cpu=True)); otherwise NCCL, one GPU per
    local rank. A plain single-process command never imports accelerate here.
    """
    if launched_size() <= 1:
        if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_PORT" in os.environ:
            # accelerate's simple launcher: `--cpu --num_processes N` with N > 1 and no MPI starts ONE process.
            logger.warning(
                "accelerate launch --cpu started a single process (several CPU processes need MPI there); "
                "use `accelerate launch --multi_gpu --num_processes N` (torchrun, gloo on CPUs) for N processes"
            )
        return World(0, 1, 0)
    from accelerate import PartialState

    # The others wait at a barrier while the main process alone writes the demo's rankings (sampled from
    # sft): longer than NCCL's 10-minute default collective timeout on a large base.
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=datetime.timedelta(hours=1))
    # A process group still alive when the interpreter exits can abort it ("terminate called without an
    # active exception", seen with gloo after a finished run): tear it down first.
    atexit.register(state.destroy_process_group)
    return World(state.process_index, state.num_processes, state.local_process_index)


def is_main() -> bool:
    return world().is_main


def local_device(device: torch.device) -> torch.device:
    """The device this process loads the base on: `device`, with CUDA pinned to this process's local rank.

    bitsandbytes' 4-bit models cannot be moved after loading, so each process loads straight onto its own
    GPU (device_map={"": local device}); `cuda` or `cuda:0` in a recipe means "this process's GPU".
    """
    if device.type != "cuda" or world().size == 1:
        return device
    return torch.device("cuda", world().local_rank)


def shard(items: Sequence[T], rank: int | None = None, size: int | None = None) -> list[T]:
    """This process's contiguous share of one global batch: sizes differ by at most one, earlier ranks larger.

    A rank may get nothing (a global batch smaller than the world); it still joins every collective.
    """
    here = world()
    rank = here.rank if rank is None else rank
    size = here.size if size is None else size
    base, extra = divmod(len(items), size)
    start = rank * base + min(rank, extra)
    return list(items[start : start + base + (1 if rank < extra else 0)])


def barrier() -> None:
    """Wait until every process gets here (after the main process wrote what the others will read)."""
    if world().size > 1:
        torch.distributed.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over processes, in place; returns it."""
    if world().size > 1:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def sum_across(value: float) -> float:
    """A Python number summed over processes (e.g. the global batch's token count)."""
    if world().size == 1:
        return value
    return float(all_reduce_sum(torch.tensor([value], dtype=torch.float64, device=_comm_device()))[0])


def all_reduce_gradients(params: Iterable[torch.nn.Parameter], *, average: bool = False) -> int:
    """Sum (or, with `average`, average) the gradients of `params` over processes, in one flat buffer;
    returns the bytes reduced.

    SFT and RM scale each process's loss by its share of the global batch before backward
    (loss_r * n_r / N), so the sum is the gradient of the global batch's mean loss; PPO's shards are
    equal, so it averages. A parameter without a gradient (a rank with an empty shard) contributes
    zeros, so every process sends the same buffer.
    """
    params = list(params)
    if world().size == 1 or not params:
        return 0
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).to(torch.float32) for g in grads])
    all_reduce_sum(flat)
    if average:
        flat /= world().size
    offset = 0
    for param, grad in zip(params, grads):
        n = grad.numel()
        param.grad = flat[offset : offset + n].view_as(grad).to(grad.dtype)
        offset += n
    return flat.numel() * flat.element_size()


def gather_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's `tensor` (the same shape on each), concatenated along dim 0 in rank order."""
    if world().size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world().size)]
    torch.distributed.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def mean_figures(figures: dict[str, float]) -> dict[str, float]:
    """Each figure averaged over processes (every process logs the same keys; their shards are equal)."""
    if world().size == 1:
        return figures
    keys = sorted(figures)
    values = torch.tensor([float(figures[k]) for k in keys], dtype=torch.float64, device=_comm_device())
    all_reduce_sum(values)
    return {k: v / world().size for k, v in zip(keys, values.tolist())}


def check_replicas(params: Iterable[torch.nn.Parameter], what: str) -> None:
    """Raise a one-line LoraRlhfError unless every process holds bit-identical `params` (a trained role).

    Data parallelism keeps the replicas equal by construction; this makes a broken invariant (a gradient
    left out of the reduction, a rank-dependent update) fail loudly instead of saving rank 0's copy.
    """
    if world().size == 1:
        return
    digest = hashlib.sha256()
    for param in params:
        digest.update(param.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    digests = gather_objects(digest.hexdigest())
    differing = [rank for rank, d in enumerate(digests) if d != digests[0]]
    if differing:
        raise LoraRlhfError(
            f"{what}: the weights of process {differing[0]} differ from those of process 0 after training; "
            "the processes fell out of step (please report this with the recipe)"
        )


def broadcast_parameters(params: Iterable[torch.nn.Parameter]) -> None:
    """Copy the main process's values of `params` to every process (what DDP does when it wraps a model)."""
    if world().size == 1:
        return
    with torch.no_grad():
        for param in params:
            torch.distributed.broadcast(param.data, src=0)


def gather_objects(obj: Any) -> list[Any]:
    """Every process's `obj` (small picklable values: RNG states, figures), in rank order, on every process."""
    if world().size == 1:
        return [obj]
    out: list[Any] = [None] * world().size
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """The main process's `obj` on every process (e.g. which checkpoint to resume from)."""
    if world().size == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def weighted_stats(
    rows: Sequence[tuple[float, dict[str, float]]], summed: Sequence[str] = ()
) -> list[dict[str, float]]:
    """Per micro-batch figures of the global batch from every process's (weight, figures) rows.

    rows[m] = (n_r, figures_r) of micro-batch m on this process, n_r the units its loss averages over
    (tokens, prompts). Each figure becomes Σ_r n_r·f_r / Σ_r n_r, the mean over the global micro-batch;
    the keys in `summed` (counts) become Σ_r f_r. One process: the rows' figures unchanged.
    """
    if world().size == 1:
        return [figures for _, figures in rows]
    everyone = gather_objects(list(rows))
    out = []
    for m in range(len(rows)):
        parts = [ranks_rows[m] for ranks_rows in everyone]
        total = sum(w for w, _ in parts)
        keys = sorted({k for _, figures in parts for k in figures})
        out.append(
            {
                k: sum(f.get(k, 0.0) for _, f in parts)
                if k in summed
                else sum(w * f[k] for w, f in parts if k in f) / max(total, 1e-12)
                for k in keys
            }
        )
    return out


def _comm_device() -> torch.device:
    """Where collective tensors live: this process's GPU under NCCL, the CPU under gloo."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
