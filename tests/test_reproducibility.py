"""Importing lora_rlhf puts MKL in its strict reproducible mode (lora_rlhf/__init__.py), unless the user chose one.

Without it the demo's sft -> rm stages, run twice in one process with the same seeds, wrote reward adapters that
differed in the 7th digit; the mode is read back from MKL itself in a fresh interpreter, as the CLI starts.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

MKL_CBWR_STRICT, MKL_CBWR_COMPATIBLE = 0x10000, 3

PROBE = """
import ctypes, os
import lora_rlhf, torch
a = torch.ones(64, 64); (a @ a).sum()  # MKL initialises its mode at its first call
lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
print(os.environ.get("MKL_CBWR"), lib.mkl_serv_cbwr_get(-1))
"""


def _mkl_symbol_present() -> bool:
    lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        return hasattr(ctypes.CDLL(str(lib)), "mkl_serv_cbwr_get")
    except OSError:
        return False


needs_mkl = pytest.mark.skipif(
    not (torch.backends.mkl.is_available() and _mkl_symbol_present()), reason="torch built without MKL"
)


def _mode(env_value: str | None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    env["OMP_NUM_THREADS"] = "1"
    if env_value is not None:
        env["MKL_CBWR"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    name, mode = out.stdout.split()
    return name, int(mode)


@needs_mkl
def test_importing_lora_rlhf_sets_strict_reproducible_mode():
    name, mode = _mode(None)
    assert name == "AUTO,STRICT"
    assert mode & MKL_CBWR_STRICT


@needs_mkl
def test_a_users_own_mkl_mode_wins():
    name, mode = _mode("COMPATIBLE")
    assert name == "COMPATIBLE"
    assert mode == MKL_CBWR_COMPATIBLE
