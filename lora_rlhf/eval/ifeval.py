"""IFEval inside `lora-rlhf eval`: every model of the run answers the 541 prompts greedily, the checkers judge.

Writes `ifeval/<model>.jsonl` ({"prompt", "response"} per line: the input of Google's
`evaluation_main --input_response_data`, so anyone can rescore the answers) and returns the `ifeval` section
of eval.json: the four accuracies per model, the per-instruction table, and bootstrap intervals (paired
between models on the prompt-level accuracies).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from lora_rlhf.data.chat import render_prompt, user_turn
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.eval.config import IFEvalConfig
from lora_rlhf.eval.distributed import generate_across_processes
from lora_rlhf.eval.result import IFEvalSection
from lora_rlhf.eval.stats import bootstrap_ci, paired_diff_ci
from lora_rlhf.ifeval import benchmark
from lora_rlhf.ifeval.checkers import Verdicts
from lora_rlhf.io import atomic_file, parse_json
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.paths import RunLayout
from lora_rlhf.train import distributed

logger = logging.getLogger(__name__)

# Later model minus earlier, where both exist.
PAIRS = (("sft", "base"), ("ppo", "sft"), ("ppo", "base"))


def run_ifeval(
    stack: RoleStack,
    models: Mapping[str, str],
    config: IFEvalConfig,
    run_dir: Path,
    *,
    bootstrap_samples: int,
    confidence: float,
    seed: int,
) -> IFEvalSection | None:
    """`models` (report name -> role) answer IFEval; the `ifeval` section of eval.json (None off the main process)."""
    prompts = benchmark.load_prompts(config.path or None)[: config.max_prompts]
    rendered = rendered_prompts(stack.tokenizer, prompts, config.system_prompt)
    answers: dict[str, list[str]] = {}
    for name in tqdm(models, desc="ifeval: answering the prompts", unit="model"):
        answers[name] = generate_across_processes(
            stack, models[name], rendered, 1, max_new_tokens=config.max_new_tokens, batch_size=config.batch_size
        ).texts
    if not distributed.is_main():
        return None
    for name, texts in answers.items():
        write_responses(RunLayout(run_dir).ifeval_responses(name), prompts, texts)
    verdicts = {name: benchmark.score(prompts, texts) for name, texts in answers.items()}
    section = summarize(prompts, verdicts, bootstrap_samples=bootstrap_samples, confidence=confidence, seed=seed)
    section.max_new_tokens = config.max_new_tokens
    section.decoding = "greedy"
    section.chat_template = "the tokenizer's, one user turn" + (
        "" if config.system_prompt is None else " after the configured system turn"
    )
    section.responses = {name: RunLayout.ifeval_responses_name(name) for name in answers}
    section.hit_max_new_tokens = {
        name: _hit_budget(stack, texts, config.max_new_tokens) for name, texts in answers.items()
    }
    logger.info("ifeval: %s", summary_line(section))
    return section


def summarize(
    prompts: list[benchmark.IFEvalPrompt],
    verdicts: Mapping[str, list],
    *,
    bootstrap_samples: int,
    confidence: float,
    seed: int,
) -> IFEvalSection:
    """Accuracies, per-instruction rates and intervals of each model's verdicts on `prompts`."""
    scores = {name: benchmark.accuracies(v) for name, v in verdicts.items()}
    ci = intervals(verdicts, PAIRS, samples=bootstrap_samples, confidence=confidence, seed=seed)
    return IFEvalSection(
        prompts=len(prompts),
        accuracy=scores,
        headline={name: benchmark.headline(s) for name, s in scores.items()},
        accuracy_ci=ci["mean"],
        diff={
            f"{a}_minus_{b}_{mode}": scores[a][f"prompt_{mode}"] - scores[b][f"prompt_{mode}"]
            for a, b in PAIRS
            if a in scores and b in scores
            for mode in ("strict", "loose")
        },
        diff_ci=ci["diff"],
        per_instruction={name: benchmark.per_instruction(prompts, v) for name, v in verdicts.items()},
    )


def intervals(
    verdicts: Mapping[str, Sequence[Verdicts]],
    pairs: Sequence[tuple[str, str]],
    *,
    samples: int,
    confidence: float,
    seed: int,
) -> dict[str, dict[str, tuple[float, float]]]:
    """Bootstrap intervals over prompts: each model's prompt-level accuracies, and paired differences.

    Returns {"mean": {"<model>_<mode>": (lo, hi)}, "diff": {"<a>_minus_<b>_<mode>": (lo, hi)}}; the
    differences resample prompts jointly (both models' verdicts on a prompt move together).
    """
    options = {"samples": samples, "confidence": confidence, "seed": seed}
    mean, diff = {}, {}
    for mode in ("strict", "loose"):
        levels = {name: benchmark.prompt_level(v, mode) for name, v in verdicts.items()}
        for name, values in levels.items():
            mean[f"{name}_{mode}"] = bootstrap_ci(values, **options)
        for a, b in pairs:
            if a in levels and b in levels:
                diff[f"{a}_minus_{b}_{mode}"] = paired_diff_ci(levels[a], levels[b], **options)
    return {"mean": mean, "diff": diff}


def summary_line(section: IFEvalSection) -> str:
    return " / ".join(f"{name} {s['prompt_loose']:.3f}" for name, s in section.accuracy.items()) + (
        " prompt-level loose"
    )


def rendered_prompts(tokenizer, prompts: Sequence[benchmark.IFEvalPrompt], system_prompt: str | None) -> list[str]:
    """What each model sees before its answer: the tokenizer's chat template over one user turn (after the
    configured system turn, if any), with the template's generation prompt."""
    return [render_prompt(tokenizer, user_turn(p.prompt, system_prompt)) for p in prompts]


def _hit_budget(stack: RoleStack, texts: list[str], budget: int) -> int:
    """How many answers used (about) the whole token budget, i.e. were likely cut off."""
    lengths = [len(ids) for ids in stack.tokenizer(texts, add_special_tokens=False).input_ids]
    return sum(n >= budget - 1 for n in lengths)


def write_responses(path: Path, prompts: list[benchmark.IFEvalPrompt], texts: list[str]) -> None:
    with atomic_file(path) as handle:
        for prompt, text in zip(prompts, texts):
            handle.write(json.dumps({"prompt": prompt.prompt, "response": text}) + "\n")


def read_responses(path: Path, prompts: Sequence[benchmark.IFEvalPrompt]) -> list[str]:
    """The answers a run wrote to `path` (ifeval/<model>.jsonl, one {"prompt", "response"} per line), in the
    order of `prompts`; a file that lacks one of them is a one-line error."""
    answers = {}
    if not Path(path).is_file():
        raise LoraRlhfError(f"IFEval answers {str(path)!r} do not exist")
    for number, raw in enumerate(Path(path).read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        row = parse_json(raw, f"{path}, line {number}")
        if not (isinstance(row, dict) and all(isinstance(row.get(k), str) for k in ("prompt", "response"))):
            raise LoraRlhfError(f'{path}, line {number}: expected {{"prompt": <text>, "response": <text>}}')
        answers[row["prompt"]] = row["response"]
    missing = [p.prompt for p in prompts if p.prompt not in answers]
    if missing:
        raise LoraRlhfError(f"{path}: no answer to {len(missing)} of the prompts (first: {missing[0][:60]!r})")
    return [answers[p.prompt] for p in prompts]
