"""Keep 4-bit (NF4) base layers differentiable on CPUs with AVX512-BF16 (used by the SFT and RM stages).

bitsandbytes 0.50's `Linear4bit.forward` repacks its weight for a CPU inference kernel (`gemv_4bit`) the
first time it runs in eval mode on inputs without grad, i.e. during a held-out evaluation or the RM bias
step. `gemv_4bit` has no autograd kernel, so from then on training steps get (almost) no gradient through
the frozen base layers: measured on a tiny NF4 Llama here, layer-0 lora_A grad norm 5.1e-3 before one
no-grad eval forward and 1.4e-3 after it, with identical weights and inputs. The repack also rewrites the
base's weight tensors in place. Switching the repack off keeps every forward on the differentiable path.

This belongs in `models/base.py`'s `prepare_for_training`; until it moves there the stages call it.
"""

from __future__ import annotations

from torch import nn


def keep_nf4_differentiable(model: nn.Module) -> int:
    """Turn off bitsandbytes' CPU repacking in every Linear4bit of `model`; returns how many layers it touched."""
    touched = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            touched += 1
    return touched
