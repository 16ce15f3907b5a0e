"""Centre the trained reward model: shift its head's bias so the demonstrations score 0 on average.

InstructGPT §3.5: "at the end of training, we normalize the reward model using a bias so that the
labeler demonstrations achieve a mean score of 0 before doing RL". A constant shift changes no ranking
and no pairwise loss; it only sets the zero point that PPO's KL penalty is weighed against.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from lora_rlhf.data.batching import pad_left
from lora_rlhf.data.demonstrations import load_sft_examples
from lora_rlhf.data.rows import OnBadRow
from lora_rlhf.data.sources import DatasetSpec
from lora_rlhf.models import forward
from lora_rlhf.models.roles import RoleStack

logger = logging.getLogger(__name__)


@torch.no_grad()
def mean_reward(stack: RoleStack, sequences: list[list[int]], batch_size: int, role: str = "reward") -> float:
    """Mean score of `role` over token sequences (prompt + response + EOS, as the rankings were encoded)."""
    total = 0.0
    with stack.evaluating():  # no LoRA dropout while measuring
        for start in range(0, len(sequences), batch_size):
            ids, mask = pad_left(sequences[start : start + batch_size], stack.tokenizer.pad_token_id)
            total += float(forward.rewards(stack, role, ids.to(stack.device), mask.to(stack.device)).float().sum())
    return total / len(sequences)


def center_on_demonstrations(
    stack: RoleStack,
    demonstrations: DatasetSpec,
    *,
    max_length: int,
    max_examples: int,
    batch_size: int,
    on_bad_row: OnBadRow = "error",
    role: str = "reward",
) -> float:
    """Shift `role`'s head bias so the mean reward of (at most `max_examples`) demonstrations is 0.

    Returns the shift added to the bias (0.0, with a warning, when no demonstrations are given).
    """
    if not demonstrations.path:
        logger.warning("rm.demonstrations.path is empty: the reward model's bias is not centred on demonstrations")
        return 0.0
    limit = min(max_examples, demonstrations.max_rows or max_examples)
    spec = dataclasses.replace(demonstrations, max_rows=limit)
    examples, report = load_sft_examples(spec, stack.tokenizer, max_length, on_bad_row)
    report.log()
    if not examples:
        logger.warning("%s: no usable demonstrations; the reward bias is left as trained", spec.display())
        return 0.0
    shift = -mean_reward(stack, [e.input_ids for e in examples], batch_size, role)
    stack.head(role).shift_bias(shift)
    logger.info("rm: shifted the reward bias by %+.4f so %d demonstrations score 0 on average", shift, len(examples))
    return shift
