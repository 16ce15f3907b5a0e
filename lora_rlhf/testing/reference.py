"""transformers' `generate` under a role: the independent reference the decoding engine is tested against.

Every response the toolkit draws comes from models/engine.py; `generate` is kept only here, for the tests that
compare the engine with it token for token and for the benchmark scripts that time the path PPO took before the
engine (`scripts/bench_ppo.py`). `sampling_kwargs` makes `generate` sample from softmax(logits / T) and nothing
else: transformers fills every option left unset from the model's generation_config (top_k 50 by default;
Qwen2.5 sets a repetition penalty of 1.05), so every processor is set to its neutral value unless asked for.
"""

from __future__ import annotations

from typing import Any

import torch

from lora_rlhf.models.roles import RoleStack

# Logits processors a model's generation_config may switch on, each at its neutral value.
NEUTRAL_SAMPLING: dict[str, Any] = {
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "typical_p": 1.0,
    "min_p": 0.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "min_new_tokens": 0,
}
# A greedy generate warns about sampling-only flags, so it gets only the processors that act on argmax too.
_NEUTRAL_GREEDY: dict[str, Any] = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_new_tokens": 0}


def sampling_kwargs(
    temperature: float, *, top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0
) -> dict[str, Any]:
    """`generate` options for softmax(logits / temperature) (greedy when 0), nothing from generation_config.

    `top_p` < 1, `top_k` > 0 or `repetition_penalty` != 1 are applied only when asked (inference);
    training and evaluation leave them off so samples follow the distribution the log-probs measure.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return {**_NEUTRAL_GREEDY, "do_sample": False, "repetition_penalty": repetition_penalty}
    # top_k 0 is "off"; None would let transformers fill in the model's default of 50.
    return {
        **NEUTRAL_SAMPLING,
        "do_sample": True,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "repetition_penalty": repetition_penalty,
    }


@torch.no_grad()
def reference_generate(
    stack: RoleStack, role: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, **generate_kwargs
) -> torch.Tensor:
    """`model.generate` under `role`, in eval mode with the KV cache on and gradient checkpointing off.

    Returns (B, T + new) ids, every row decoded until the batch's last one stops; pad `input_ids` on the left.
    """
    if stack.tokenizer is not None:
        generate_kwargs.setdefault("pad_token_id", stack.tokenizer.pad_token_id)
    with stack.use(role), stack.generation_mode():
        return stack.model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
