"""What one training phase cost: wall time and the process's peak resident memory (RSS) during it.

The peak is the kernel's own high-water mark (VmHWM in /proc/self/status), reset before the phase by writing
"5" to /proc/self/clear_refs (Linux >= 4.0), so every phase of one process is measured alike and exactly (no
sampling). Where the reset is refused the peak is the process's lifetime high-water mark
(`resource.getrusage`), flagged `rss_reset: false`. On a CUDA device the allocator's peak is reported too.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


@contextlib.contextmanager
def measured() -> Iterator[dict[str, Any]]:
    """Fill the yielded dict, after the block, with wall_s, peak_rss_mib, start_rss_mib, rss_reset and
    (on CUDA) peak_cuda_mib."""
    cost: dict[str, Any] = {}
    reset = _reset_peak_rss()
    cuda = _cuda()
    if cuda is not None:
        cuda.reset_peak_memory_stats()
    start_rss = _status_mib("VmRSS")
    start = time.perf_counter()
    try:
        yield cost
    finally:
        cost["wall_s"] = time.perf_counter() - start
        cost["peak_rss_mib"] = _status_mib("VmHWM") if reset else _lifetime_peak_mib()
        cost["start_rss_mib"] = start_rss
        cost["rss_reset"] = reset
        if cuda is not None:
            cost["peak_cuda_mib"] = cuda.max_memory_allocated() / MIB


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_mib("VmHWM") is not None


def _status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status (given there in kB), in MiB; None off Linux."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None


def _lifetime_peak_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def _cuda() -> Any:
    torch = sys.modules.get("torch")  # the stack is loaded by now; never import torch only to ask
    if torch is not None and torch.cuda.is_available():
        return torch.cuda
    return None
