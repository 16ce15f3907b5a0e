"""From the last hidden state to the logits the model's own forward would return.

Log-probs are computed from hidden states a chunk of positions at a time (see `logprobs.py`), so the
projection after the backbone has to be rebuilt outside the model's `forward`. Most causal LMs apply
only the LM head, but some transform its output, and missing that silently trains on another
distribution than the one `generate` samples from:

    Gemma-2/3        logits = c * tanh(logits / c)          c = config.final_logit_softcapping
    Granite          logits = logits / config.logits_scaling (16 in its released configs)
    Cohere           logits = logits * config.logit_scale
    MuseSpark/Glimmer logits * output_multiplier, then the softcap

`projection_for` reads these from the config, and `matches_forward` checks the result against the
model's own forward on a short probe. A model whose logits still differ (an architecture with a
transform not listed here) is served by its own forward instead: correct, but it materialises the
full (B, T, V) logits.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Largest |log-softmax difference| between the projection and the model's forward that still counts as
# the same function: float32 rounding is ~1e-6; half precision rounds logits to ~1e-2.
_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-6}
_HALF_TOLERANCE = 5e-2
_PROBE_TOKENS = 8


@dataclasses.dataclass(frozen=True)
class LogitsProjection:
    """`hidden (..., H) -> float32 logits (..., V)`: the LM head, a scale, then a soft cap (each optional)."""

    lm_head: nn.Module | None
    scale: float = 1.0
    softcap: float | None = None

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        # With no head the input already is the model's logits (the fallback path): only upcast.
        logits = (self.lm_head(hidden) if self.lm_head is not None else hidden).float()
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


IDENTITY = LogitsProjection(lm_head=None)


def projection_for(causal_lm: nn.Module) -> LogitsProjection:
    """The projection `causal_lm.forward` applies after its backbone, from its config."""
    config = causal_lm.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = 1.0
    logit_scale = getattr(causal_lm, "logit_scale", None)  # Cohere copies config.logit_scale onto the model
    if logit_scale is None:
        logit_scale = getattr(text, "logit_scale", None)
    if isinstance(logit_scale, (int, float)):
        scale *= float(logit_scale)
    logits_scaling = getattr(text, "logits_scaling", None)  # Granite divides
    if isinstance(logits_scaling, (int, float)) and logits_scaling:
        scale /= float(logits_scaling)
    multiplier = getattr(text, "output_multiplier", None)
    if isinstance(multiplier, (int, float)):
        scale *= float(multiplier)
    softcap = getattr(text, "final_logit_softcapping", None)
    return LogitsProjection(causal_lm.get_output_embeddings(), scale=scale, softcap=softcap or None)


@torch.no_grad()
def projection_error(causal_lm: nn.Module, backbone: nn.Module, projection: LogitsProjection) -> float:
    """Max |log-softmax(projection(backbone(x))) - log-softmax(causal_lm(x).logits)| on a short probe.

    Runs in eval mode (dropout off) and restores the previous mode.
    """
    vocab = causal_lm.get_output_embeddings().weight.shape[0]
    device = next(causal_lm.parameters()).device
    ids = (torch.arange(_PROBE_TOKENS, device=device) * 7 + 3).remainder(vocab).unsqueeze(0)
    mask = torch.ones_like(ids)
    positions = torch.arange(_PROBE_TOKENS, device=device).unsqueeze(0)
    was_training = causal_lm.training
    causal_lm.eval()
    try:
        hidden = backbone(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).last_hidden_state
        ours = projection(hidden).log_softmax(-1)
        theirs = causal_lm(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
        theirs = theirs.float().log_softmax(-1)
    finally:
        causal_lm.train(was_training)
    if ours.shape != theirs.shape:
        return float("inf")
    return (ours - theirs).abs().max().item()


def tolerance(dtype: torch.dtype) -> float:
    return _TOLERANCE.get(dtype, _HALF_TOLERANCE)


def matches_forward(causal_lm: nn.Module, backbone: nn.Module, projection: LogitsProjection) -> bool:
    """Whether chunked projection reproduces the model's own logits; logs a line when it does not."""
    try:
        error = projection_error(causal_lm, backbone, projection)
    except Exception as exc:  # noqa: BLE001 - any failure to reproduce the forward means: use the forward
        logger.info("chunked log-probs: probe failed (%s); using the model's own forward", exc)
        return False
    dtype = causal_lm.get_output_embeddings().weight.dtype
    if error <= tolerance(dtype):
        return True
    logger.warning(
        "%s computes its logits in a way the chunked LM-head projection does not reproduce (max log-prob "
        "error %.3g on a probe); log-probs will use the model's own forward, which keeps the full (B, T, V) logits",
        type(causal_lm).__name__,
        error,
    )
    return False
