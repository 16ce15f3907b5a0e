"""One run directory, one writer: an OS lock on OUTPUT_DIR/.lock, held for the whole command (issue 12).

Two `lora-rlhf` processes writing one run directory would interleave metrics rows and overwrite each
other's checkpoints and adapters, and both would exit 0. The commands that write a run directory (sft,
rm, ppo, pipeline, eval) hold this lock; a second one fails at once, naming the holder's PID.

`fcntl.flock` rather than a PID file checked by hand: the kernel drops the lock when its process dies,
however it dies (SIGKILL, the OOM killer), so a dead run never blocks the next one. The file holds the
holder's PID only so the refusal can name it. It is never deleted: unlinking a lock file lets a newcomer
lock a fresh inode while a third process still holds the old one, and both would think they own the run.

Under `accelerate launch` (issue 13) the main process alone writes the run directory and so alone takes
this lock; the others pass `main_process=False` (lora_rlhf.cli.common).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.paths import LOCK_FILE, RunLayout

LOCK_NAME = LOCK_FILE  # its name inside the run directory (the layout is lora_rlhf.paths')


@contextlib.contextmanager
def run_dir_lock(path: str | os.PathLike, *, main_process: bool = True) -> Iterator[None]:
    """Hold the exclusive lock of run directory `path` (which must exist) for the `with` block.

    Raises LoraRlhfError at once, naming the holder's PID, when another process holds it. With
    `main_process=False` nothing is locked: the main process of a multi-process launch holds it for all.
    """
    if not main_process:
        yield
        return
    path = Path(path)
    fd = os.open(RunLayout(path).lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LoraRlhfError(
                f"{path} is in use by another lora-rlhf process ({_holder(fd)}): wait for it to finish, "
                "or use another output directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _holder(fd: int) -> str:
    """'pid N' from the lock file; the holder writes it just after locking, so wait a moment for it."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return f"pid {text}"
        time.sleep(0.01)
    return "pid unknown"
