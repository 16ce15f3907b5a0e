"""`lora-rlhf eval`: base vs sft vs ppo on held-out prompts -> eval.json, report.md, plots/."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lora_rlhf.data.chat import Prompt, render_prompt
from lora_rlhf.data.prompts import prompt_text
from lora_rlhf.eval.compare import mean, pairwise_win_rates
from lora_rlhf.eval.config import EvalConfig
from lora_rlhf.eval.kl import sequence_kl
from lora_rlhf.eval.report import write_report
from lora_rlhf.data.batching import pad_left
from lora_rlhf.eval.responses import Responses, generate_responses
from lora_rlhf.io import atomic_file, write_json
from lora_rlhf.metrics import read_metrics
from lora_rlhf.models.roles import RoleStack

logger = logging.getLogger(__name__)

GoldFn = Callable[[list[str], list[str]], list[float]]
# Report name -> role: "ppo" is the policy PPO trained (InstructGPT's "PPO" / "PPO-ptx" models).
MODELS = {"base": "base", "sft": "sft", "ppo": "policy"}


def evaluate(
    stack: RoleStack,
    prompts: Sequence[Prompt],
    config: EvalConfig,
    run_dir: str | Path,
    *,
    gold_fn: GoldFn | None = None,
) -> dict[str, Any]:
    """Score every available model on `prompts`, write eval.json, report.md and plots/ into `run_dir`.

    Runs in eval mode (no LoRA dropout in the RM scores and the KL), whatever mode a stage left the model in.
    """
    with stack.evaluating():
        return _evaluate(stack, prompts, config, Path(run_dir), gold_fn)


def _evaluate(stack: RoleStack, prompts: Sequence[Prompt], config: EvalConfig, run_dir: Path, gold_fn: GoldFn | None) -> dict[str, Any]:
    prompts = list(prompts)[: config.max_prompts]
    models = {name: role for name, role in MODELS.items() if role == "base" or stack.has_role(role)}
    rendered = [render_prompt(stack.tokenizer, p) for p in prompts]
    torch.manual_seed(config.seed)
    responses: dict[str, Responses] = {}
    for name in tqdm(models, desc="eval: generating", unit="model"):
        responses[name] = generate_responses(
            stack, models[name], rendered, max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size, temperature=config.temperature,
        )
    results = _score(stack, prompts, responses, config, gold_fn)
    results["rm_accuracy"] = _rm_accuracy(run_dir)
    if "ppo" in responses:
        results["kl"] = _policy_kl(stack, responses["ppo"], config.batch_size)
    write_json(run_dir / "eval.json", results)
    _write_samples(run_dir / "eval_samples.jsonl", prompts, responses, results)
    write_report(run_dir, results, prompts, {k: v.texts for k, v in responses.items()}, config.examples)
    logger.info("eval: %s", _summary_line(results))
    return results


def _score(stack, prompts, responses, config, gold_fn) -> dict[str, Any]:
    results: dict[str, Any] = {"prompts": len(prompts)}
    raw = [prompt_text(p) for p in prompts]
    if gold_fn is not None:
        gold = {name: [float(s) for s in gold_fn(raw, r.texts)] for name, r in responses.items()}
        results["gold"] = {name: mean(s) for name, s in gold.items()}
        results["gold_scores"] = gold
    if stack.has_role("reward"):
        reward = {name: _reward_scores(stack, r, config.batch_size) for name, r in responses.items()}
        results["reward"] = {name: mean(s) for name, s in reward.items()}
    judge = results.get("gold_scores") or (reward if stack.has_role("reward") else None)
    if judge is not None:
        results["win_rate"] = pairwise_win_rates(judge)
        results["win_rate_judge"] = "gold" if gold_fn is not None else "reward_model"
    results.pop("gold_scores", None)
    return results


@torch.no_grad()
def _reward_scores(stack: RoleStack, responses: Responses, batch_size: int) -> list[float]:
    scores: list[float] = []
    for begin in range(0, len(responses.input_ids), batch_size):
        ids, mask = pad_left(responses.input_ids[begin : begin + batch_size], stack.tokenizer.pad_token_id)
        scores += stack.rewards(ids.to(stack.device), mask.to(stack.device)).float().cpu().tolist()
    return scores


@torch.no_grad()
def _policy_kl(stack: RoleStack, responses: Responses, batch_size: int) -> float:
    """Mean over prompts of KL(policy || sft) summed over the policy's own response tokens."""
    kls: list[float] = []
    for begin in range(0, len(responses.input_ids), batch_size):
        chunk = responses.input_ids[begin : begin + batch_size]
        ids, mask = pad_left(chunk, stack.tokenizer.pad_token_id)
        response_mask = torch.zeros_like(mask)
        for i, (seq, start) in enumerate(zip(chunk, responses.response_start[begin : begin + batch_size])):
            response_mask[i, ids.shape[1] - len(seq) + start :] = 1
        kl = sequence_kl(stack, "policy", "reference", ids.to(stack.device), mask.to(stack.device), response_mask.to(stack.device))
        kls += kl.cpu().tolist()
    return mean(kls)


def _rm_accuracy(run_dir: Path) -> float | None:
    """The reward model's held-out pairwise accuracy, as its stage last logged it."""
    rows = [r for r in read_metrics(run_dir / "metrics" / "rm.jsonl") if r.get("split") == "eval" and "accuracy" in r]
    return float(rows[-1]["accuracy"]) if rows else None


def _write_samples(path: Path, prompts, responses: dict[str, Responses], results) -> None:
    with atomic_file(path) as handle:
        for i, prompt in enumerate(prompts):
            row = {"prompt": prompt, **{name: r.texts[i] for name, r in responses.items()}}
            handle.write(json.dumps(row) + "\n")


def _summary_line(results: dict[str, Any]) -> str:
    parts = []
    for key in ("gold", "reward"):
        if key in results:
            parts.append(f"{key} " + " / ".join(f"{k} {v:.3f}" for k, v in results[key].items()))
    if "kl" in results:
        parts.append(f"KL {results['kl']:.3f}")
    return "; ".join(parts)
