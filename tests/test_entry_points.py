"""`python -m lora_rlhf` runs the same command line as the `lora-rlhf` script."""

from __future__ import annotations

import subprocess
import sys


def test_python_dash_m_lora_rlhf_is_the_cli():
    out = subprocess.run([sys.executable, "-m", "lora_rlhf", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert out.stdout.startswith("usage: lora-rlhf") and "plan" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "lora_rlhf", "plan", "--gpu-memory", "x"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "lora-rlhf plan: error: --gpu-memory: 'x' is not a size like 24GiB, 24GB or 80"
    ]
