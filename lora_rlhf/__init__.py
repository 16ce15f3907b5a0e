"""lora_rlhf: the InstructGPT recipe (SFT, ranking reward model, PPO-ptx) with one LoRA adapter per role
on a single, optionally 4-bit, base model."""

import logging
import os

# Bit-reproducible CPU math, set before torch first calls MKL: by default MKL may round one matmul differently
# from one run to the next (measured: the demo's sft -> rm stages in one process, same seeds, gave reward
# adapters that differed in the 7th digit from step 6 or step 22, run to run; the PPO that followed moved its
# figures in the 3rd digit). MKL's conditional numerical reproducibility (STRICT) pins the kernels' order at no
# measured cost. A user's own MKL_CBWR wins; a process that ran MKL before importing lora_rlhf keeps its mode.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.models import BaseModelConfig, LoraSettings, RoleStack

__version__ = "0.1.0"
__all__ = ["BaseModelConfig", "LoraRlhfError", "LoraSettings", "RoleStack", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
