"""Resumable checkpoints: roles, optimizers, schedulers, RNG states and a JSON state, never pickled objects.

    checkpoints/<stage>/step-00000040/
        roles/<role>/            adapter folders (+ head.safetensors), as RoleStack.save_role writes them
        optim-<name>.pt          optimizer / scheduler state dicts (tensors and plain containers only)
        rng.pt                   torch (+ CUDA) RNG states (of process 0)
        rng-rank-R.pt            those of process R, when the stage ran on several processes (issue 13)
        state.json               step, world size, data position and anything else the stage needs (KL coefficient, ...)
        manifest.json            every file's size and sha256, written last (lora_rlhf.train.manifest)

Each checkpoint is written atomically, so the newest complete one is always safe to resume from.
`torch.load` runs with weights_only=True: a tampered checkpoint cannot execute code.

Resume picks the newest checkpoint that verifies and logs a warning for each newer one it skips (issue 12):
with a manifest, every listed file must match it; without one (written before manifests existed), every
file must load. Folders an interrupted write left behind (`.step-N.tmp-*`, `.step-N.old-*`) are removed.
Saving step N deletes checkpoints of later steps: after a resume from an older checkpoint they belong to
the abandoned part of the run, as the metrics rows after N do (lora_rlhf.metrics).

Several processes (issue 13): every process calls save, the main one alone writes (the others' RNG states
reach it through a gather); every process loads, each its own RNG state. A checkpoint resumes only under
the number of processes that wrote it: the others' RNG streams (LoRA dropout) cannot be re-sharded.
"""

from __future__ import annotations

import io
import json
import logging
import random
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.io import atomic_dir
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.train import distributed
from lora_rlhf.train.manifest import has_manifest, manifest_problem, write_manifest

logger = logging.getLogger(__name__)

_PREFIX = "step-"
_CHECKPOINT = re.compile(r"step-(\d+)")
# What lora_rlhf.io.atomic_dir leaves beside `step-N` when a write is killed half-way.
_PARTIAL = re.compile(r"\.step-\d+\.(tmp|old)-.+")


def save_checkpoint(
    folder: Path,
    step: int,
    stack: RoleStack,
    roles: Sequence[str],
    stateful: Mapping[str, Any],
    state: Mapping[str, Any],
    *,
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` under `folder`; delete those of later steps and all but the newest `keep`.

    Called by every process; the main one writes, after gathering every process's RNG state.
    """
    target = folder / f"{_PREFIX}{step:08d}"
    rng_files = distributed.gather_objects(_rng_bytes())  # rng.pt's bytes of every process
    if not distributed.is_main():
        return target
    remove_partial_writes(folder)
    with atomic_dir(target) as tmp:
        for role in roles:
            stack.save_role(role, tmp / "roles" / role)
        for name, obj in stateful.items():
            torch.save(obj.state_dict(), tmp / f"optim-{name}.pt")
        for rank, data in enumerate(rng_files):
            (tmp / _rng_file(rank)).write_bytes(data)
        world_size = len(rng_files)
        (tmp / "state.json").write_text(json.dumps({"step": step, "world_size": world_size, **state}, indent=2))
        write_manifest(tmp)  # last: a checkpoint whose files match its manifest is complete
    found = list_checkpoints(folder)
    superseded = [path for path in found if _step(path) > step]
    kept = [path for path in found if _step(path) <= step]
    for old in superseded + kept[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint folders (`step-N`) under `folder`, oldest first, whether they verify or not."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _CHECKPOINT.fullmatch(p.name)]
    return sorted(found, key=_step)


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint under `folder` that verifies; None if `folder` holds no checkpoint at all.

    Each newer one that fails verification is skipped with a warning saying why. Raises LoraRlhfError
    when there are checkpoints but none verifies: training from scratch instead would be a silent restart.
    """
    remove_partial_writes(folder)
    found = list_checkpoints(folder)
    for path in reversed(found):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("skipping damaged checkpoint %s: %s", path, problem)
    if found:
        raise LoraRlhfError(
            f"no checkpoint in {folder} can be resumed: all {len(found)} are damaged (see the warnings above); "
            f"remove {folder} to train this stage from the start, or use another output directory"
        )
    return None


def resume_checkpoint(folder: Path) -> Path | None:
    """`latest_checkpoint(folder)` as the main process finds it, on every process (only it removes partial writes)."""
    found = latest_checkpoint(folder) if distributed.is_main() else None
    return distributed.broadcast_object(found)


def checkpoint_problem(path: Path) -> str | None:
    """Why checkpoint `path` cannot be resumed (one line), or None if it verifies.

    With a manifest, every file it lists must match it. Without one, the checkpoint predates manifests:
    it verifies if state.json and rng.pt exist and every file in it loads.
    """
    if has_manifest(path):
        return manifest_problem(path)
    for required in ("state.json", "rng.pt"):
        if not (path / required).is_file():
            return f"{required} is missing"
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        try:
            _load_any(file)
        except Exception as exc:  # noqa: BLE001 - any failure to load means "cannot resume from this"
            first_line = (str(exc).strip().splitlines() or [""])[0]
            return f"{file.relative_to(path)} does not load ({type(exc).__name__}: {first_line})"
    return None


def remove_partial_writes(folder: Path) -> list[Path]:
    """Delete the temporary folders that interrupted checkpoint writes left under `folder`; return them.

    Safe because one process at a time writes a run directory (lora_rlhf.pipeline.lock).
    """
    if not folder.is_dir():
        return []
    partial = [p for p in folder.iterdir() if _PARTIAL.fullmatch(p.name)]
    for path in partial:
        logger.info("removing %s, left by an interrupted checkpoint write", path)
        shutil.rmtree(path, ignore_errors=True)
    return partial


def load_checkpoint(path: Path, stack: RoleStack, roles: Sequence[str], stateful: Mapping[str, Any]) -> dict[str, Any]:
    """Restore roles, optimizers/schedulers and this process's RNG state from `path`; return its state.json.

    Refuses, in one line, a checkpoint written by another number of processes.
    """
    state = json.loads((path / "state.json").read_text())
    written, here = int(state.get("world_size", 1)), distributed.world().size
    if written != here:
        raise LoraRlhfError(
            f"{path} was written by {written} process(es) and this run has {here}: resume with "
            f"--num_processes {written}, or remove {path.parent} to train this stage again"
        )
    for role in roles:
        stack.restore_role(role, path / "roles" / role)
    for name, obj in stateful.items():
        obj.load_state_dict(torch.load(path / f"optim-{name}.pt", weights_only=True, map_location="cpu"))
    _set_rng_state(torch.load(path / _rng_file(distributed.world().rank), weights_only=True))
    return state


def _step(path: Path) -> int:
    return int(path.name[len(_PREFIX) :])


def _rng_bytes() -> bytes:
    """This process's RNG states as rng.pt holds them (bytes travel between processes; tensors do not unpickle)."""
    buffer = io.BytesIO()
    torch.save(_rng_state(), buffer)
    return buffer.getvalue()


def _rng_file(rank: int) -> str:
    return "rng.pt" if rank == 0 else f"rng-rank-{rank}.pt"


def _load_any(file: Path) -> None:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        load_file(file)
    elif file.suffix in (".pt", ".bin"):
        torch.load(file, weights_only=True, map_location="cpu")
    elif file.suffix == ".json":
        json.loads(file.read_text())


def _rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].copy()),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy(), state["numpy_pos"], 0, 0.0))
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
