"""KL(pi_policy || pi_ref) along given responses, from the full next-token distributions.

PPO's logged `kl` is the sampled estimate sum_t (log pi - log pi_ref)(a_t); for the evaluation report we
can afford the exact per-state KL over the whole vocabulary, chunked over positions so no (B, T, V)
fp32 tensor is ever materialised. The logits are the model's own (soft cap and logit scaling included:
`models/forward.py: logit_states`), so the KL is measured on the distribution `generate` samples from.
"""

from __future__ import annotations

import torch

from lora_rlhf.models import forward
from lora_rlhf.models.roles import RoleStack


@torch.no_grad()
def sequence_kl(
    stack: RoleStack,
    policy: str,
    reference: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    chunk_size: int = 256,
) -> torch.Tensor:
    """Per-sequence KL summed over response positions.

    Args:
        input_ids, attention_mask: (B, T) prompt + response, left-padded.
        response_mask: (B, T) 1 at response tokens; the distribution that predicts token t is read at t-1.
    Returns:
        (B,) sum over response tokens t of KL(pi_policy(.|x_<t) || pi_ref(.|x_<t)).
    """
    with stack.use(policy):
        states_policy, project = forward.logit_states(stack, input_ids, attention_mask)
    with stack.use(reference):
        states_ref, _ = forward.logit_states(stack, input_ids, attention_mask)
    # Only the positions that predict a response token are projected onto the vocabulary: the prompt's (most
    # of a short answer's row) would be masked out anyway.
    return _summed_kl(states_policy[:, :-1], states_ref[:, :-1], project, response_mask[:, 1:], chunk_size)


@torch.no_grad()
def response_kl(
    stack: RoleStack,
    policy: str,
    reference: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_width: int,
    *,
    chunk_size: int = 256,
) -> torch.Tensor:
    """`sequence_kl` of rollout rows, each repeated prompt encoded once for its samples.

    Args:
        input_ids, attention_mask: (B, P + A) prompt left-padded to P columns, response right-padded after it.
    Returns:
        (B,) sum over response tokens of KL(pi_policy || pi_ref), as `sequence_kl`.
    """
    if input_ids.shape[1] == prompt_width:  # no response token anywhere
        return torch.zeros(input_ids.shape[0], device=input_ids.device)
    with stack.use(policy):
        states_policy, project = forward.response_logit_states(stack, input_ids, attention_mask, prompt_width)
    with stack.use(reference):
        states_ref, _ = forward.response_logit_states(stack, input_ids, attention_mask, prompt_width)
    return _summed_kl(states_policy, states_ref, project, attention_mask[:, prompt_width:], chunk_size)


def _summed_kl(
    states_policy: torch.Tensor, states_ref: torch.Tensor, project, mask: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """(B, T, .) states of both models at the positions `mask` (B, T) marks -> (B,) their KL summed per row."""
    rows, cols = mask.bool().nonzero(as_tuple=True)
    kl = torch.zeros(len(rows), device=mask.device)
    for start in range(0, len(rows), chunk_size):
        index = (rows[start : start + chunk_size], cols[start : start + chunk_size])
        logp = project(states_policy[index]).log_softmax(-1)  # (chunk, V), float32
        logq = project(states_ref[index]).log_softmax(-1)
        kl[start : start + chunk_size] = (logp.exp() * (logp - logq)).sum(-1)
    return torch.zeros(mask.shape[0], device=mask.device).index_add_(0, rows, kl)
