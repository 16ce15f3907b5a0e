#!/usr/bin/env bash
# Install PyTorch into the current Python environment before the project itself:
#   - a machine with a CUDA driver gets the normal (CUDA) build;
#   - a machine without one gets the CPU build, so `pip install` does not pull several GB of CUDA
#     packages. torch==2.13.0 is the CPU wheel our CI machines hold locally; elsewhere set
#     TORCH_CPU_INDEX to PyTorch's CPU wheel index to get a CPU build from there.
set -euo pipefail
PY=${PYTHON:-python}
if "$PY" -c "import torch" 2>/dev/null; then
    exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$PY" -m pip install "torch>=2.4"
elif [ -n "${TORCH_CPU_INDEX:-}" ]; then
    "$PY" -m pip install torch --index-url "$TORCH_CPU_INDEX"
else
    "$PY" -m pip install "torch==2.13.0"
fi
