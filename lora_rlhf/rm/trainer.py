"""The reward-model stage: train `reward` (adapter + scalar head) on K-way rankings, then centre it."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from lora_rlhf.data.batching import pad_left
from lora_rlhf.data.demonstrations import encode_demonstration, load_demonstrations
from lora_rlhf.data.rankings import RankingExample, load_ranking_examples
from lora_rlhf.data.split import hold_out
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.rm.config import RMConfig
from lora_rlhf.rm.loss import ranking_loss
from lora_rlhf.train.loop import StepOutput, Task, fit

logger = logging.getLogger(__name__)


def collate_rankings(examples: list[RankingExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Every response of every prompt as one left-padded sequence, so each is scored exactly once.

    Returns input_ids / attention_mask (N, T) for the N = sum K_i sequences, and ranks / valid (B, K_max)
    with `slot` (N,) giving each sequence's flat position b * K_max + k in that grid.
    """
    k_max = max(len(e.response_ids) for e in examples)
    sequences, slots = [], []
    ranks = torch.zeros((len(examples), k_max), dtype=torch.long)
    valid = torch.zeros((len(examples), k_max), dtype=torch.bool)
    for b, e in enumerate(examples):
        for k, response in enumerate(e.response_ids):
            sequences.append(e.prompt_ids + response)
            slots.append(b * k_max + k)
        ranks[b, : len(e.ranks)] = torch.tensor(e.ranks)
        valid[b, : len(e.ranks)] = True
    ids, mask = pad_left(sequences, pad_id)
    return {"input_ids": ids, "attention_mask": mask, "ranks": ranks, "valid": valid, "slot": torch.tensor(slots)}


def rm_step(stack: RoleStack, batch: dict[str, torch.Tensor], role: str = "reward") -> StepOutput:
    """Score the batch's N responses in one forward pass and apply the ranking loss per prompt."""
    flat = stack.rewards(batch["input_ids"], batch["attention_mask"], role=role)  # (N,)
    grid = torch.zeros(batch["ranks"].numel(), dtype=flat.dtype, device=flat.device)
    scores = grid.index_put((batch["slot"],), flat).view_as(batch["ranks"])  # (B, K_max)
    out = ranking_loss(scores, batch["ranks"], batch["valid"])
    stats = {"loss": out.loss.item(), "accuracy": out.accuracy.item(), "margin": out.margin.item(), "pairs": float(out.pairs)}
    return StepOutput(out.loss, stats)


def train_reward_model(stack: RoleStack, config: RMConfig, output_dir: Path, *, resume: bool = False) -> dict[str, float]:
    """Train the `reward` role; write metrics/rm.jsonl, checkpoints/rm/, adapters/reward/ (+ head)."""
    output_dir = Path(output_dir)
    load = lambda spec: load_ranking_examples(spec, stack.tokenizer, config.max_length, ties=config.ties, on_bad_row=config.on_bad_row)  # noqa: E731
    examples, report = load(config.data)
    report.log()
    train, held = (examples, load(config.eval_data)[0]) if config.eval_data else hold_out(examples, config.eval_fraction, config.train.seed)
    _create_reward_role(stack, config)
    pad = stack.tokenizer.pad_token_id
    batch_size = config.train.batch_size

    def evaluate() -> dict[str, float]:
        pairs = correct = margin = loss = 0.0
        for start in range(0, len(held), batch_size):
            batch = {k: v.to(stack.device) for k, v in collate_rankings(held[start : start + batch_size], pad).items()}
            s = rm_step(stack, batch).stats
            pairs += s["pairs"]
            correct += s["accuracy"] * s["pairs"]
            margin += s["margin"] * s["pairs"]
            loss += s["loss"] * s["pairs"]
        return {"loss": loss / max(pairs, 1), "accuracy": correct / max(pairs, 1), "margin": margin / max(pairs, 1)}

    task = Task("rm", "reward", train, lambda items: collate_rankings(items, pad), lambda b: rm_step(stack, b), evaluate if held else None)
    figures = fit(stack, task, config.train, output_dir, resume=resume)
    bias = center_rewards(stack, config)
    stack.save_role("reward", output_dir / "adapters" / "reward")
    summary = {"train_loss": figures.get("loss", float("nan")), "prompts": len(train), "dropped": report.dropped, "bias_shift": bias}
    summary.update({k[5:] if k != "eval_loss" else k: v for k, v in figures.items() if k.startswith("eval_")})
    return summary


def _create_reward_role(stack: RoleStack, config: RMConfig) -> None:
    if stack.has_role("reward"):
        return
    if config.init == "sft":
        if not stack.has_role("sft"):
            raise LoraRlhfError("rm.init is 'sft' but the stack has no sft role: train sft first or set rm.init: fresh")
        stack.copy_role("sft", "reward")
    else:
        stack.add_role("reward", config.lora)


@torch.no_grad()
def center_rewards(stack: RoleStack, config: RMConfig) -> float:
    """Shift the head's bias so the demonstrations' mean reward is 0 (InstructGPT §3.5); return the shift."""
    if not config.demonstrations.path:
        logger.warning("rm.demonstrations is empty: the reward model's bias is not centred on demonstrations")
        return 0.0
    demos, _ = load_demonstrations(config.demonstrations, on_bad_row="skip")
    demos = demos[: config.bias_examples]
    stack.model.eval()
    scores = []
    for start in range(0, len(demos), config.train.batch_size * 2):
        chunk = demos[start : start + config.train.batch_size * 2]
        # Encoded exactly as the rankings were: rendered prompt, then response + EOS, tokenized apart.
        encoded = [encode_demonstration(d, stack.tokenizer, config.max_length).input_ids for d in chunk]
        ids, mask = pad_left(encoded, stack.tokenizer.pad_token_id)
        scores.append(stack.rewards(ids.to(stack.device), mask.to(stack.device)).float().cpu())
    if not scores:
        return 0.0
    shift = -float(torch.cat(scores).mean())
    stack.head("reward").shift_bias(shift)
    logger.info("rm: shifted the reward bias by %.4f so demonstrations score 0 on average", shift)
    return shift
