"""`lora-rlhf eval`: base vs sft vs ppo (vs dpo, where the run has one) on held-out prompts -> eval.json, report.md,
plots/."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lora_rlhf.data.batching import length_grouped_order, pad_left, pad_right
from lora_rlhf.data.chat import Prompt, render_prompt
from lora_rlhf.data.prompts import prompt_text
from lora_rlhf.eval.best_of_n import best_of_n
from lora_rlhf.eval.compare import mean
from lora_rlhf.eval.config import EvalConfig
from lora_rlhf.eval.distributed import generate_across_processes
from lora_rlhf.eval.ifeval import run_ifeval
from lora_rlhf.eval.ifeval import summary_line as ifeval_summary
from lora_rlhf.eval.kl import response_kl
from lora_rlhf.eval.lm_loss import lm_losses
from lora_rlhf.eval.report import write_report
from lora_rlhf.eval.responses import Responses
from lora_rlhf.eval.result import (
    BestOfN,
    EvalResult,
    IFEvalSection,
    PairAccuracy,
    RMAccuracy,
    read_eval_result,
    write_eval_result,
)
from lora_rlhf.eval.rm_accuracy import rm_accuracy
from lora_rlhf.eval.samples import read_eval_samples, write_eval_samples
from lora_rlhf.eval.scoring import GoldFn, compare_models, reward_scores
from lora_rlhf.metrics import read_metrics
from lora_rlhf.models.positions import check_lengths
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.paths import RunLayout
from lora_rlhf.train import distributed

logger = logging.getLogger(__name__)

# Report name -> role: "ppo" is the policy PPO trained (InstructGPT's "PPO" / "PPO-ptx" models), "dpo" the policy
# the dpo stage trained (docs/dpo.md). A model is scored where the stack holds its role.
MODELS = {"base": "base", "sft": "sft", "ppo": "policy", "dpo": "dpo"}
# The models tuned away from sft, whose KL to it is measured: report name -> role.
TUNED = {"ppo": "policy", "dpo": "dpo"}


def evaluate(
    stack: RoleStack,
    prompts: Sequence[Prompt],
    config: EvalConfig,
    run_dir: str | Path,
    *,
    gold_fn: GoldFn | None = None,
) -> EvalResult | None:
    """Score every available model on `prompts`, write eval.json, report.md and plots/ into `run_dir`.

    Returns what eval.json holds (None off the main process). Runs in eval mode (no LoRA dropout in the RM
    scores and the KL), whatever mode a stage left the model in.
    """
    check_lengths(stack.base_model, config.lengths())
    with stack.evaluating():
        return _evaluate(stack, prompts, config, Path(run_dir), gold_fn)


def _evaluate(
    stack: RoleStack, prompts: Sequence[Prompt], config: EvalConfig, run_dir: Path, gold_fn: GoldFn | None
) -> EvalResult | None:
    prompts = list(prompts)[: config.max_prompts]
    models = {name: role for name, role in MODELS.items() if role == "base" or stack.has_role(role)}
    rendered = [render_prompt(stack.tokenizer, p) for p in prompts]
    n = config.samples_per_prompt
    # Prompt i's samples are rows i*n .. i*n + n-1 of every model's responses.
    repeated = [text for text in rendered for _ in range(n)]
    torch.manual_seed(config.seed)
    responses: dict[str, Responses] = {}
    for name in tqdm(models, desc="eval: generating", unit="model"):
        responses[name] = generate_across_processes(  # split over the processes of `accelerate launch`
            stack,
            models[name],
            repeated,
            n,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size * n,
            temperature=config.temperature,
        )
    benchmark = _ifeval(stack, models, config, run_dir)
    if not distributed.is_main():  # scoring and writing run on the main process alone (issue 13)
        return None
    gold = _gold_scores([p for p in prompts for _ in range(n)], responses, gold_fn)
    prompt_gold = {name: per_prompt_means(g, n) for name, g in gold.items()} if gold is not None else None
    # RM score of every response row, kept so best-of-N does not score re-used sft samples a second time.
    row_rewards = _reward_scores(stack, responses, config)
    prompt_rewards = {k: per_prompt_means(v, n) for k, v in row_rewards.items()} if row_rewards is not None else None
    kls = {  # every tuned model's KL(model ‖ sft)
        name: _policy_kl(stack, responses[name], role, config.batch_size)
        for name, role in TUNED.items()
        if name in responses
    }
    results = EvalResult(
        prompts=len(prompts),
        temperature=config.temperature,
        samples_per_prompt=n,
        confidence=config.confidence,
        bootstrap_samples=config.bootstrap_samples,
        **compare_models(prompt_gold, prompt_rewards, config),
        rm_accuracy=_rm_accuracy(stack, config, run_dir, gold_fn),
        kl_to_sft=kls or None,
        ifeval=benchmark,
    )
    picked_gold = None
    if config.best_of_n and stack.has_role("reward") and stack.has_role("sft"):
        results.best_of_n, picked_gold = _best_of_n(
            stack, prompts, rendered, config, responses["sft"], row_rewards["sft"], prompt_gold, gold_fn
        )
    if config.lm_text.path:
        results.lm_loss = lm_losses(stack, models, config.lm_text, config.lm_max_length, config.batch_size)
    write_eval_result(RunLayout(run_dir).eval_path, results)
    write_eval_samples(
        RunLayout(run_dir).eval_samples,
        prompts,
        {name: r.texts for name, r in responses.items()},
        n,
        gold=prompt_gold,
        best_of_n_gold=picked_gold,
    )
    # The report shows each prompt's first sample side by side.
    write_report(run_dir, results, prompts, {k: v.texts[::n] for k, v in responses.items()}, config.examples)
    logger.info("eval: %s", _summary_line(results))
    return results


def _best_of_n(
    stack: RoleStack,
    prompts: list[Prompt],
    rendered: list[str],
    config: EvalConfig,
    sft: Responses,
    sft_rewards: list[float],
    prompt_gold: dict[str, list[float]] | None,
    gold_fn: GoldFn | None,
) -> tuple[BestOfN, list[float] | None]:
    """Best-of-N on the first eval.best_of_n_prompts prompts, from sft's eval samples where they were drawn the
    way best-of-N draws (`_reusable_rows`); and its picks' gold per prompt."""
    m = config.best_of_n_prompts or len(prompts)
    sft_gold = prompt_gold["sft"][:m] if prompt_gold is not None else None
    rows = _reusable_rows(config, min(m, len(prompts)))
    candidates = sft.rows(rows) if rows is not None else None
    result, picked_gold = best_of_n(
        stack,
        prompts[:m],
        rendered[:m],
        config,
        gold_fn=gold_fn,
        sft_gold=sft_gold,
        candidates=candidates,
        candidate_scores=[sft_rewards[r] for r in rows] if rows is not None else None,
    )
    result.prompts = len(prompts[:m])
    result.candidates_from_eval_samples = candidates is not None
    if sft_gold is not None:  # sft's own gold on the same prompts (greedy, or its samples' mean): the baseline
        result.gold_sft = mean(sft_gold)
    return result, picked_gold


def evaluate_benchmarks(stack: RoleStack, config: EvalConfig, run_dir: str | Path) -> EvalResult | None:
    """Only the benchmarks of `config` (IFEval), merged into the run's eval.json and report.md.

    `lora-rlhf eval --run DIR --benchmark ifeval`: what eval measured before stays; the `ifeval` section is
    replaced. Returns the merged results (None off the main process).
    """
    run_dir = Path(run_dir)
    check_lengths(stack.base_model, config.lengths())
    with stack.evaluating():
        models = {name: role for name, role in MODELS.items() if role == "base" or stack.has_role(role)}
        section = _ifeval(stack, models, config, run_dir)
    if not distributed.is_main():
        return None
    path = RunLayout(run_dir).eval_path
    results = read_eval_result(path) if path.is_file() else EvalResult()
    results.ifeval = section
    write_eval_result(path, results)
    prompts, texts = _saved_examples(RunLayout(run_dir).eval_samples)
    write_report(run_dir, results, prompts, texts, config.examples if prompts else 0)
    logger.info("eval: %s", _summary_line(results))
    return results


def _ifeval(stack: RoleStack, models: dict[str, str], config: EvalConfig, run_dir: Path) -> IFEvalSection | None:
    if not config.ifeval.enabled:
        return None
    return run_ifeval(
        stack,
        models,
        config.ifeval,
        run_dir,
        bootstrap_samples=config.bootstrap_samples,
        confidence=config.confidence,
        seed=config.seed,
    )


def _saved_examples(path: Path) -> tuple[list[Prompt], dict[str, list[str]]]:
    """eval_samples.jsonl's prompts and each model's first answer, for a report re-written without regenerating."""
    if not path.is_file():
        return [], {}
    samples = read_eval_samples(path)
    return samples.prompts, {name: [a[0] for a in answers] for name, answers in samples.answers.items()}


def per_prompt_means(values: Sequence[float], n: int) -> list[float]:
    """(P * n,) scores of n consecutive samples per prompt -> (P,) each prompt's mean (n = 1: unchanged)."""
    if len(values) % n:
        raise ValueError(f"{len(values)} scores are not {n} samples per prompt")
    return [mean(values[i : i + n]) for i in range(0, len(values), n)]


def _gold_scores(prompts, responses: dict[str, Responses], gold_fn: GoldFn | None) -> dict[str, list[float]] | None:
    """Per response row: `prompts` holds each row's prompt."""
    if gold_fn is None:
        return None
    raw = [prompt_text(p) for p in prompts]
    return {name: [float(s) for s in gold_fn(raw, r.texts)] for name, r in responses.items()}


def _reward_scores(
    stack: RoleStack, responses: dict[str, Responses], config: EvalConfig
) -> dict[str, list[float]] | None:
    """RM score of every response row of every model; None without a reward role.

    `batch_size` rows at a time, not one batch of every sample: batches of similar lengths pad less.
    """
    if not stack.has_role("reward"):
        return None
    return {
        name: reward_scores(stack, r.input_ids, config.batch_size, r.response_start) for name, r in responses.items()
    }


def _reusable_rows(config: EvalConfig, prompts: int) -> list[int] | None:
    """The rows of sft's eval samples that serve as best-of-N candidates, when drawn the way best-of-N draws.

    Saves a second N-row generate per prompt: with samples_per_prompt >= best_of_n at best_of_n_temperature,
    the first best_of_n samples of each of the first `prompts` prompts are exactly such candidates.
    """
    n, k = config.samples_per_prompt, config.best_of_n
    if n < k or config.temperature != config.best_of_n_temperature:
        return None
    return [p * n + j for p in range(prompts) for j in range(k)]


def _rm_accuracy(stack: RoleStack, config: EvalConfig, run_dir: Path, gold_fn: GoldFn | None) -> RMAccuracy:
    """Measured on eval.rankings when given (with intervals); else the RM stage's last logged held-out figure."""
    if config.rankings.path and stack.has_role("reward"):
        return rm_accuracy(stack, config, gold_fn)
    if config.rankings.path:
        logger.warning(
            "eval: rankings given but there is no reward role to score them; RM accuracy from metrics/rm.jsonl"
        )
    rows = [r for r in read_metrics(RunLayout(run_dir).metrics("rm")) if r.get("split") == "eval" and "accuracy" in r]
    return RMAccuracy("metrics", PairAccuracy(float(rows[-1]["accuracy"]) if rows else None))


@torch.no_grad()
def _policy_kl(stack: RoleStack, responses: Responses, role: str, batch_size: int) -> float:
    """Mean over prompts of KL(role || sft) summed over `role`'s own response tokens (role: policy or dpo).

    Rows are laid out as PPO's rollouts (prompt left-padded, response right-padded after it), so the samples
    of one prompt in a batch share one encoding of it (`forward.response_logit_states`).
    """
    kls: list[float] = []
    pad = stack.tokenizer.pad_token_id
    # Batches of similar response lengths (a batch pads every response to its longest); the mean needs no unsorting.
    order = length_grouped_order(responses.input_ids, responses.response_start)
    sequences, prompt_lengths = [responses.input_ids[i] for i in order], [responses.response_start[i] for i in order]
    for begin in range(0, len(sequences), batch_size):
        chunk, starts = sequences[begin : begin + batch_size], prompt_lengths[begin : begin + batch_size]
        prompt_ids, prompt_mask = pad_left([seq[:start] for seq, start in zip(chunk, starts)], pad)
        response_ids, response_mask = pad_right([seq[start:] for seq, start in zip(chunk, starts)], pad)
        ids = torch.cat([prompt_ids, response_ids], dim=1).to(stack.device)
        mask = torch.cat([prompt_mask, response_mask], dim=1).to(stack.device)
        kls += response_kl(stack, role, "reference", ids, mask, prompt_ids.shape[1]).cpu().tolist()
    return mean(kls)


def _summary_line(results: EvalResult) -> str:
    parts = []
    for key, scores in (("gold", results.gold), ("reward", results.reward)):
        if scores is not None:
            parts.append(f"{key} " + " / ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    for name, kl in (results.kl_to_sft or {}).items():
        parts.append(f"KL({name} ‖ sft) {kl:.3f}")
    if results.rm_accuracy is not None and results.rm_accuracy.labels.accuracy is not None:
        parts.append(f"RM accuracy {results.rm_accuracy.labels.accuracy:.3f}")
    if results.best_of_n is not None and results.best_of_n.gold is not None:
        parts.append(f"best-of-{results.best_of_n.n} gold {results.best_of_n.gold:.3f}")
    if results.ifeval is not None:
        parts.append("IFEval " + ifeval_summary(results.ifeval))
    return "; ".join(parts)
