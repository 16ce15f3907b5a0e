"""Resumable checkpoints: roles, optimizers, schedulers, RNG states and a JSON state, never pickled objects.

    checkpoints/<stage>/step-00000040/
        roles/<role>/            adapter folders (+ head.safetensors), as RoleStack.save_role writes them
        optim-<name>.pt          optimizer / scheduler state dicts (tensors and plain containers only)
        rng.pt                   torch (+ CUDA) RNG states
        state.json               step, data position and anything else the stage needs (KL coefficient, ...)

Each checkpoint is written atomically, so the newest complete one is always safe to resume from.
`torch.load` runs with weights_only=True: a tampered checkpoint cannot execute code.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lora_rlhf.io import atomic_dir
from lora_rlhf.models.roles import RoleStack

_PREFIX = "step-"


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
    """Write checkpoint `step` under `folder` and delete all but the newest `keep`."""
    target = folder / f"{_PREFIX}{step:08d}"
    with atomic_dir(target) as tmp:
        for role in roles:
            stack.save_role(role, tmp / "roles" / role)
        for name, obj in stateful.items():
            torch.save(obj.state_dict(), tmp / f"optim-{name}.pt")
        torch.save(_rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints under `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith(_PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


def latest_checkpoint(folder: Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def load_checkpoint(path: Path, stack: RoleStack, roles: Sequence[str], stateful: Mapping[str, Any]) -> dict[str, Any]:
    """Restore roles, optimizers/schedulers and RNG states from `path`; return its state.json."""
    for role in roles:
        stack.restore_role(role, path / "roles" / role)
    for name, obj in stateful.items():
        obj.load_state_dict(torch.load(path / f"optim-{name}.pt", weights_only=True, map_location="cpu"))
    _set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    return json.loads((path / "state.json").read_text())


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
