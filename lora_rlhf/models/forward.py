"""What is computed with a role of a `RoleStack`: hidden states, log-probs, rewards, values, and their forms that
encode a prompt once for the rows that share it.

Each is a function of the stack, the role and the batch; the stack only keeps the adapters and their modes
(models/roles.py). Functions without a role run under the stack's active adapter (inside `stack.use(role)`).
B rows, T columns, H hidden size, V vocabulary; rollout rows are P prompt columns then A response columns.
"""

from __future__ import annotations

import torch

from lora_rlhf.models.base import gradient_checkpointing_on
from lora_rlhf.models.heads import gather_last, last_token_index
from lora_rlhf.models.kv_cache import cache_argument, distinct_prefixes, returned_cache
from lora_rlhf.models.logits import IDENTITY
from lora_rlhf.models.logprobs import Projection, TokenLogProbs, token_logprobs
from lora_rlhf.models.names import BASE
from lora_rlhf.models.positions import position_ids
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.models.row_adapters import BASE_ROW

# `prefix_hidden_states`' inputs: (D, P') prompt ids and mask, (N, R) response ids and mask, (N,) prompt index.
SharedPrompts = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def hidden_states(stack: RoleStack, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) ids and mask -> (B, T, H) last hidden states under the active adapter (no LM head)."""
    backbone = stack.causal_lm().base_model
    # Positions count real tokens only, so a left-padded row is encoded as if it were unpadded.
    positions = position_ids(attention_mask)
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False)
    return out.last_hidden_state


def logit_states(
    stack: RoleStack, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, Projection]:
    """Under the active adapter: (B, T) ids and mask -> (B, T, .) states and the projection of any slice of them
    to float32 logits.

    The (B, T, H) last hidden states and the chunkable LM-head projection where that reproduces the model's
    forward; otherwise the forward's own (B, T, V) logits and the identity (see `models/logits.py`).
    """
    if stack.chunked_logits:
        return hidden_states(stack, input_ids, attention_mask), stack.projection
    positions = position_ids(attention_mask)
    out = stack.causal_lm()(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False)
    return out.logits, IDENTITY


def logprobs(
    stack: RoleStack,
    role: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_size: int = 256,
    start: int = 0,
) -> TokenLogProbs:
    """Per-token log pi_role(x_{t+1} | x_{<=t}) of given sequences: (B, T) -> (B, T-1-start), chunked over T.

    `start` skips the LM head on the first positions (e.g. a prompt's, when only the response's
    log-probs are wanted: start = P - 1 gives (B, A)); the backbone still sees every token.
    """
    with stack.use(role):
        states, project = logit_states(stack, input_ids, attention_mask)
        return token_logprobs(
            states[:, start:-1],
            input_ids[:, start + 1 :],
            project,
            chunk_size=chunk_size,
            temperature=temperature,
            with_entropy=with_entropy,
        )


def rewards(stack: RoleStack, role: str, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) sequences -> (B,) `role`'s scalar scores read at each row's last non-pad token."""
    head = stack.head(role)
    with stack.use(role):
        return gather_last(head(hidden_states(stack, input_ids, attention_mask)), attention_mask)


def values(stack: RoleStack, role: str, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) sequences -> (B, T) `role`'s value of the state ending at each position."""
    head = stack.head(role)
    with stack.use(role):
        return head(hidden_states(stack, input_ids, attention_mask))


def prefix_hidden_states(
    stack: RoleStack,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    prompt_index: torch.Tensor,
) -> torch.Tensor:
    """Hidden states of N responses that share B prompts, each prompt encoded ONCE, under the active adapter.

    The prompts run first and their KV cache is gathered to one copy per response, then the responses
    run on top of it; gradients reach the prompt's tokens through the cache. With K responses per prompt
    that encodes a prompt once instead of K times: the C(K, 2) pairs of a ranking (InstructGPT §3.5)
    cost P + K*R tokens instead of K*(P + R).

    Args:
        prompt_ids, prompt_mask: (B, P), padded on the LEFT.
        response_ids, response_mask: (N, R), padded on the RIGHT (every response non-empty).
        prompt_index: (N,) which prompt row each response continues.
    Returns:
        (N, R, H) last hidden states of the response positions, equal (up to float rounding) to those
        of `hidden_states` over each left-padded prompt + response.
    """
    backbone = stack.causal_lm().base_model
    out = backbone(
        input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids(prompt_mask), use_cache=True
    )
    cache = returned_cache(out)
    if cache is None:
        raise RuntimeError("the model returned no KV cache (gradient checkpointing on?): use hidden_states")
    cache.batch_select_indices(prompt_index)  # (B, heads, P, d) -> (N, heads, P, d) in every layer
    mask = torch.cat([prompt_mask[prompt_index], response_mask], dim=1)
    # A response's positions continue after its prompt's real tokens, as in the unshared left-padded row.
    offset = prompt_mask.long().sum(-1)[prompt_index].unsqueeze(1)
    positions = offset + torch.arange(response_ids.shape[1], device=response_ids.device)
    out = backbone(
        input_ids=response_ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        **{cache_argument(backbone): cache},
    )
    return out.last_hidden_state


def prefix_rewards(
    stack: RoleStack,
    role: str,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    prompt_index: torch.Tensor,
) -> torch.Tensor:
    """`rewards` of N responses sharing B prompts (see `prefix_hidden_states` for the shapes) -> (N,)."""
    head = stack.head(role)
    with stack.use(role):
        hidden = prefix_hidden_states(stack, prompt_ids, prompt_mask, response_ids, response_mask, prompt_index)
    scores = head(hidden)  # (N, R)
    return scores.gather(1, last_token_index(response_mask).unsqueeze(1)).squeeze(1)


# --- rollout rows: [left-padded prompt (P columns) | right-padded response (A columns)], as PPO lays them out.
# Several samples of one prompt arrive as rows with equal prompt columns; each function below then encodes
# that prompt once (`prefix_hidden_states`) and equals its full-row form up to float rounding.


def response_logprobs(
    stack: RoleStack,
    role: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_width: int,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> TokenLogProbs:
    """(B, P + A) rollout rows -> (B, A) log pi_role of each response token: `logprobs(start=P - 1)`."""
    with stack.use(role):
        states, project = response_logit_states(stack, input_ids, attention_mask, prompt_width)
        return token_logprobs(
            states, input_ids[:, prompt_width:], project, temperature=temperature, with_entropy=with_entropy
        )


def response_logit_states(
    stack: RoleStack, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int
) -> tuple[torch.Tensor, Projection]:
    """Under the active adapter: (B, P + A) rollout rows -> the (B, A, .) states that predict the A response
    tokens and their projection to logits: `logit_states(...)[:, P - 1 : -1]`."""
    p = prompt_width
    shared = _shared_prompts(stack, input_ids, attention_mask, p) if stack.chunked_logits else None
    if shared is None:
        states, project = logit_states(stack, input_ids, attention_mask)
        return states[:, p - 1 : -1], project
    return prefix_hidden_states(stack, *shared)[:, :-1], stack.projection  # positions P-1 .. T-2


def response_values(
    stack: RoleStack, role: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int
) -> torch.Tensor:
    """(B, P + A) rollout rows -> (B, A) values of the states before each response token:
    `values(...)[:, P - 1 : -1]`."""
    p = prompt_width
    head = stack.head(role)
    with stack.use(role):
        shared = _shared_prompts(stack, input_ids, attention_mask, p)
        if shared is None:
            return head(hidden_states(stack, input_ids, attention_mask))[:, p - 1 : -1]
        return head(prefix_hidden_states(stack, *shared))[:, :-1]


def response_rewards(
    stack: RoleStack, role: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int
) -> torch.Tensor:
    """(B, P + A) rollout rows -> (B,) scores at each row's last real token: `rewards(...)`."""
    shared = _shared_prompts(stack, input_ids, attention_mask, prompt_width)
    if shared is None:
        return rewards(stack, role, input_ids, attention_mask)
    return prefix_rewards(stack, role, *shared)


@torch.no_grad()
def frozen_scores(
    stack: RoleStack,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_width: int,
    *,
    temperature: float = 1.0,
    with_reward: bool = True,
    with_value: bool = True,
) -> dict[str, torch.Tensor] | None:
    """(B, P + A) rollout rows -> {"ref_logprobs": (B, A), "values": (B, A), "scores": (B,)} in ONE forward:
    what `response_logprobs(.., "reference", ..)`, `response_values(.., "value", ..)` and
    `response_rewards(.., "reward", ..)` give, up to float rounding.

    The rows pass through the base once per role, stacked (2B or 3B rows), each copy under its own adapter
    (models/row_adapters.py): the base's weights are read (a 4-bit base: dequantized) once instead of three
    times, and each layer's fixed cost is paid once. None where this cannot run, and the caller makes the
    passes one role at a time: prompts that repeat (each role's pass then encodes each prompt once, which
    saves more), a model whose logits need its own forward, or adapters the per-row path cannot apply.
    Without `with_value` (critic-free PPO, issue 27) the value role is not stacked and "values" not returned.
    """
    p, b = prompt_width, input_ids.shape[0]
    roles = ["reference"] + (["value"] if with_value else []) + (["reward"] if with_reward else [])
    if not stack.chunked_logits or _shared_prompts(stack, input_ids, attention_mask, p) is not None:
        return None
    per_row = [BASE_ROW if (n := stack.resolve(r)) == BASE else n for r in roles for _ in range(b)]
    row_adapters = stack.row_adapters()
    if not row_adapters.supports(per_row):
        return None
    with row_adapters.applied(per_row):
        hidden = hidden_states(stack, input_ids.repeat(len(roles), 1), attention_mask.repeat(len(roles), 1))
    reference = token_logprobs(hidden[:b, p - 1 : -1], input_ids[:, p:], stack.projection, temperature=temperature)
    out = {"ref_logprobs": reference.logprobs}
    if with_value:
        out["values"] = stack.head("value")(hidden[b : 2 * b])[:, p - 1 : -1]
    if with_reward:
        out["scores"] = gather_last(stack.head("reward")(hidden[(len(roles) - 1) * b :]), attention_mask)
    return out


def _shared_prompts(
    stack: RoleStack, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int
) -> SharedPrompts | None:
    """(B, P + A) rollout rows split for `prefix_hidden_states`, or None when no prompt repeats.

    The D distinct prompts but their last token (D, P - 1) form the shared part; each row's last prompt
    token and its response (B, A + 1) run on top, so the hidden states come back for positions P - 1 ..
    T - 1, the ones that predict or score the response. None too where the prefix path cannot run: a
    one-token prompt (nothing to share) or gradient checkpointing in training (no KV cache is returned).
    """
    p = prompt_width
    checkpointing = stack.model.training and gradient_checkpointing_on(stack.causal_lm())
    if p < 2 or input_ids.shape[0] < 2 or checkpointing:
        return None
    shared = distinct_prefixes(input_ids, attention_mask, p - 1)
    if shared is None or not shared[1].any(dim=1).all():
        return None
    prompt_ids, prompt_mask, inverse = shared
    return prompt_ids, prompt_mask, input_ids[:, p - 1 :], attention_mask[:, p - 1 :], inverse
