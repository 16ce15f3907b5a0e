"""A folder's manifest: every file's name, size and sha256, so a torn copy is told from a complete one (issue 12).

A checkpoint folder is renamed into place in one step (lora_rlhf.io.atomic_dir), yet its files can still
be short or missing afterwards: a crash before the page cache reached the disk, a full disk on a network
file system, a run directory copied while it was written. The manifest is written last, after every file
it lists has been flushed to disk; a folder whose files match it is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST_NAME = "manifest.json"
_FORMAT = 1
_CHUNK = 1 << 20


def write_manifest(folder: Path) -> Path:
    """Flush every file under `folder` to disk, then write (and flush) manifest.json listing them."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": _sha256(path, sync=True)}
    target = folder / MANIFEST_NAME
    with target.open("w") as handle:
        json.dump({"format": _FORMAT, "files": files}, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    return target


def manifest_problem(folder: Path) -> str | None:
    """Why `folder` does not match its manifest (one line), or None if every listed file is intact."""
    try:
        files = json.loads((folder / MANIFEST_NAME).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{MANIFEST_NAME} is unreadable ({type(exc).__name__})"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["size"]:
            return f"{name} is {size} bytes, the manifest says {expected['size']}"
        if _sha256(path) != expected["sha256"]:
            return f"{name} does not match its sha256 in the manifest"
    return None


def has_manifest(folder: Path) -> bool:
    return (folder / MANIFEST_NAME).exists()


def _sha256(path: Path, *, sync: bool = False) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
        if sync:
            os.fsync(handle.fileno())
    return digest.hexdigest()
