"""Train one role of the stack on a list of examples: the loop the SFT and reward-model stages share.

Why not `transformers.Trainer`: it owns the model, so its checkpoints save (and resume) every adapter
of the shared PeftModel plus, for a plain nn.Module, the whole 4-bit base; it knows nothing of the
scalar heads that live beside the PeftModel; and with gradient checkpointing the backward pass must run
while the trained role's adapter is active. What Trainer would give us we take from the same libraries:
`transformers.get_scheduler`, `accelerate.Accelerator` (device, autocast, backward, clipping) and
resumable checkpoints of adapters, optimizer, scheduler, RNG and data position.

On several processes (issue 13, lora_rlhf.train.distributed) `batch_size` stays the global micro-batch:
each process computes its shard, weights its loss by its share of the global batch's tokens or prompts,
and the role's gradients are summed across processes before clipping, so the update does not depend on
the number of processes. Only the main process writes metrics, checkpoints and adapters.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.paths import RunLayout
from lora_rlhf.train import distributed
from lora_rlhf.train.checkpoint import load_checkpoint, resume_checkpoint, save_checkpoint
from lora_rlhf.train.config import OptimConfig
from lora_rlhf.train.optim import adamw, clip_and_step
from lora_rlhf.train.records import open_metrics

logger = logging.getLogger(__name__)


class BatchLoss(NamedTuple):
    """A stage's loss on one batch (`Task.loss`): the tensor to backpropagate and the figures to log."""

    loss: torch.Tensor  # scalar, with grad
    stats: dict[str, float]  # detached figures to log (averaged over the micro-batches of a step)
    # The units `loss` is a mean over (response tokens, ranked prompts): this process's weight in the
    # global batch when several processes share it.
    weight: float = 1.0


@dataclasses.dataclass
class Task:
    """What a stage trains: examples, how to batch them, the loss, and a held-out evaluation."""

    stage: str  # "sft" or "rm": names metrics/<stage>.jsonl and checkpoints/<stage>/
    role: str  # the role whose adapter (and head) is trained
    examples: Sequence[Any]
    collate: Callable[[list[Any]], dict[str, torch.Tensor]]
    loss: Callable[[dict[str, torch.Tensor]], BatchLoss]  # a collated batch -> its loss and figures
    evaluate: Callable[[], dict[str, float]] | None = None
    # Learning rate of the role's scalar head, when it differs from the adapter's (None: the same).
    head_learning_rate: float | None = None
    # Figures that are counts (tokens, pairs): summed across processes, where the others are averaged.
    summed: tuple[str, ...] = ()


def make_accelerator(mixed_precision: str, device: torch.device):
    from accelerate import Accelerator

    if mixed_precision == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        mixed_precision = "bf16" if bf16 else "no"
    return Accelerator(mixed_precision=mixed_precision if device.type != "cpu" else "no", cpu=device.type == "cpu")


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """A permutation of range(n) fixed by (seed, epoch), so resuming replays it exactly."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def batch_order(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The micro-batches of one epoch, in `epoch_order`."""
    order = epoch_order(n, seed, epoch)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def fit(
    stack: RoleStack,
    task: Task,
    config: OptimConfig,
    output_dir: Path,
    *,
    resume: bool = False,
    report_to: Sequence[str] = (),
) -> dict[str, float]:
    """Train `task.role` with AdamW + schedule; log (also to the `report_to` trackers), evaluate, checkpoint;
    return the last figures.
    """
    if not task.examples:
        raise LoraRlhfError(f"{task.stage}: no training examples left after validation")
    accelerator = make_accelerator(config.mixed_precision, stack.device)
    here = distributed.world()
    torch.manual_seed(config.seed + here.rank)  # rank 0 draws as one process does; the others their own dropout
    stack.set_trainable(task.role)
    distributed.broadcast_parameters(stack.role_parameters(task.role))  # every process starts from the same role
    micro_per_epoch = math.ceil(len(task.examples) / config.batch_size)
    steps_per_epoch = max(1, micro_per_epoch // config.gradient_accumulation)
    total = config.max_steps or steps_per_epoch * config.epochs
    optimizer, scheduler = adamw(
        _param_groups(stack, task),
        config.learning_rate,
        config,
        scheduler=config.scheduler,
        warmup_steps=math.ceil(config.warmup_ratio * total),
        total_steps=total,
    )
    stateful = {"optimizer": optimizer, "scheduler": scheduler}
    ckpt_dir = RunLayout(output_dir).checkpoints(task.stage)
    step, position = 0, 0
    latest = resume_checkpoint(ckpt_dir) if resume else None
    if latest is not None:
        state = load_checkpoint(latest, stack, [task.role], stateful)
        step, position = state["step"], state["position"]
        logger.info("%s: resuming from %s (step %d)", task.stage, latest, step)
    metrics = open_metrics(output_dir, task.stage, resume_step=step if latest else None, report_to=report_to)
    last: dict[str, float] = {}
    progress = tqdm(
        total=total, initial=step, desc=f"{task.stage}: training {task.role}", unit="step", disable=not here.is_main
    )
    window: list[dict[str, float]] = []
    try:
        while step < total:
            epoch, micro = divmod(position, micro_per_epoch)
            batches = batch_order(len(task.examples), config.batch_size, config.seed, epoch)[micro:]
            group = batches[: config.gradient_accumulation]
            window.append(_optimizer_step(stack, task, group, accelerator, optimizer, scheduler, config, step + 1))
            position += len(group)
            step += 1
            progress.update(1)
            if step % config.logging_steps == 0 or step == total:
                last = _average(window)
                window = []
                metrics.log(step, **last, lr=scheduler.get_last_lr()[0], epoch=position / micro_per_epoch)
                progress.set_postfix(loss=f"{last['loss']:.4f}")
            if task.evaluate is not None and (step % config.eval_steps == 0 or step == total):
                held = _evaluate(stack, task)
                _check_finite(task.stage, step, "the held-out loss", held.get("loss", 0.0))
                last.update({f"eval_{k}": v for k, v in held.items()})
                metrics.log(step, split="eval", **{k[5:]: v for k, v in last.items() if k.startswith("eval_")})
            if step % config.save_steps == 0 or step == total:
                check_finite_role(stack, task.role, task.stage, f"at step {step}")  # never checkpoint a diverged role
                save_checkpoint(
                    ckpt_dir, step, stack, [task.role], stateful, {"position": position}, keep=config.keep_checkpoints
                )
    finally:
        progress.close()
        metrics.close()
        stack.set_trainable()
    distributed.check_replicas(stack.role_parameters(task.role), f"{task.stage}: {task.role}")
    return last


def check_finite_role(stack: RoleStack, role: str, stage: str, when: str) -> None:
    """Raise a one-line LoraRlhfError if any weight of `role` (adapter and head) is NaN or infinite.

    A diverged adapter must never be saved as finished (issue 12: `learning_rate: .inf` wrote an all-NaN
    adapter and exited 0); the PPO stage has its own guard (ppo/guard.py).
    """
    params = [p.detach() for p in stack.role_parameters(role)]
    if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
        raise LoraRlhfError(
            f"{stage} stopped {when}: the {role} weights are not finite (NaN or inf); no adapter was saved "
            f" (lower {stage}.train.learning_rate or set {stage}.train.max_grad_norm)"
        )


def _param_groups(stack: RoleStack, task: Task) -> list[dict[str, Any]]:
    """The role's adapter at `learning_rate`; its head (if any) at `task.head_learning_rate` when set.

    The schedule scales every group alike, so the head keeps its ratio to the adapter throughout.
    """
    head = list(stack.heads[task.role].parameters()) if task.role in stack.heads else []
    ids = {id(p) for p in head}
    adapter = [p for p in stack.role_parameters(task.role) if id(p) not in ids]
    if not head or task.head_learning_rate is None:
        return [{"params": adapter + head}]
    return [{"params": adapter}, {"params": head, "lr": task.head_learning_rate}]


def _optimizer_step(
    stack, task: Task, group: list[list[int]], accelerator, optimizer, scheduler, config: OptimConfig, step: int
) -> dict[str, float]:
    """Accumulate gradients over the micro-batches of `group`, then take one clipped AdamW step.

    Each micro-batch is global: this process computes its shard, and the gradients are summed across
    processes before clipping. A non-finite loss or gradient norm stops the stage before the step,
    naming it (`step`, 1-based).
    """
    rows: list[tuple[float, dict[str, float]]] = []
    with stack.training(), stack.use(task.role):  # backward inside: checkpointed blocks recompute under this adapter
        for indices in group:
            rows.append(_micro_backward(stack, task, distributed.shard(indices), accelerator, len(group), step))
    distributed.all_reduce_gradients(stack.role_parameters(task.role))
    stats = distributed.weighted_stats(rows, task.summed)
    done = clip_and_step(stack.role_parameters(task.role), optimizer, accelerator, config.max_grad_norm)
    if done.grad_norm is not None:
        stats[-1]["grad_norm"] = done.grad_norm
        _check_finite(task.stage, step, "grad_norm", done.grad_norm)
    if not done.updated:
        _check_finite(task.stage, step, "the update", math.inf)
    scheduler.step()
    return _average(stats)


def _micro_backward(
    stack, task: Task, indices: list[int], accelerator, n_micro: int, step: int
) -> tuple[float, dict[str, float]]:
    """Backward of this process's shard of one micro-batch -> (its weight, its figures).

    With N processes the loss is scaled by n_r / Σ n (n_r: the tokens or prompts this shard's mean loss
    is over), so the gradients summed across processes are those of the global micro-batch's mean loss,
    however unevenly it was split. An empty shard (a last batch smaller than the world) adds nothing
    but still joins the collectives.
    """
    if not indices:
        distributed.sum_across(0.0)
        return 0.0, {}
    batch = {k: v.to(stack.device) for k, v in task.collate([task.examples[i] for i in indices]).items()}
    with accelerator.autocast():
        out = task.loss(batch)
    loss = out.loss
    if distributed.world().size > 1:
        total = distributed.sum_across(out.weight)
        if out.weight == 0:  # nothing to average here (every prompt of the shard tied): no gradient, no figures
            return 0.0, {}
        loss = loss * (out.weight / total)
    _check_finite(task.stage, step, "loss", float(out.loss.detach()))
    accelerator.backward(loss / n_micro)
    return out.weight, out.stats


def _check_finite(stage: str, step: int, name: str, value: float) -> None:
    if not math.isfinite(value):
        raise LoraRlhfError(
            f"{stage} stopped at step {step}: {name} is {value}, not finite (diverged); no adapter was saved "
            f"(lower {stage}.train.learning_rate)"
        )


@torch.no_grad()
def _evaluate(stack: RoleStack, task: Task) -> dict[str, float]:
    with stack.evaluating():
        return task.evaluate()


def _average(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for row in rows for k in row}
    return {k: sum(row[k] for row in rows if k in row) / sum(1 for row in rows if k in row) for k in sorted(keys)}
