"""Method versus method: the paired gold difference of every two methods of the ablation, and of each with
best-of-N, on the same held-out prompts (issue 27).

Each method's eval keeps every model's gold per prompt in its eval_samples.jsonl (lora_rlhf.eval.samples). The
intervals are eval's own paired bootstrap (lora_rlhf.eval.stats.paired_diff_ci) at the eval config's settings
(lora_rlhf.eval.scoring.bootstrap_kwargs), so a difference between two methods is computed exactly as eval
computes a method's difference to sft.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.eval.compare import mean
from lora_rlhf.eval.config import EvalConfig
from lora_rlhf.eval.samples import EvalSamples, read_eval_samples
from lora_rlhf.eval.scoring import bootstrap_kwargs
from lora_rlhf.eval.stats import paired_diff_ci
from lora_rlhf.paths import RunLayout
from lora_rlhf.pipeline.ablation.variants import EVAL_NAME, METHODS

BEST_OF_N = "best_of_n"  # the ablation row of best-of-N (sft + RM)


def method_pairs(dirs: Mapping[str, Path], config: EvalConfig, best_of_n_from: str | None = None) -> dict[str, Any]:
    """ablation.json's `pairs`: each method's (and best-of-N's) mean gold, best first, and for every two of them
    the mean per-prompt difference (higher ranked minus lower) with its paired interval.

    Args:
        dirs: method -> its run directory, whose eval_samples.jsonl holds its answers to the held-out prompts.
        config: the eval config whose bootstrap settings (samples, confidence, seed) the intervals use.
        best_of_n_from: the method whose eval drew best-of-N (its picks' gold per prompt); None: no best-of-N.
    Methods whose file holds no gold per prompt (no gold judge, or evaluated before issue 27) are listed under
    `without_gold`. Two methods evaluated on different prompts are a one-line LoraRlhfError naming both dirs.
    """
    samples = {name: read_eval_samples(RunLayout(path).eval_samples) for name, path in dirs.items()}
    check_same_prompts(samples, dirs)
    gold = {name: s.gold[EVAL_NAME[METHODS[name].role]] for name, s in samples.items() if _has_gold(s, name)}
    picks = samples[best_of_n_from].best_of_n_gold if best_of_n_from is not None else None
    if picks is not None:
        gold[BEST_OF_N] = picks  # on the first len(picks) prompts
    ranking = sorted(gold, key=lambda name: mean(gold[name]), reverse=True)
    pairs = [_pair(a, b, gold, config) for i, a in enumerate(ranking) for b in ranking[i + 1 :]]
    return {
        "judge": "gold",
        "confidence": config.confidence,
        "bootstrap_samples": config.bootstrap_samples,
        "seed": config.seed,
        "ranking": [{"method": name, "gold": mean(gold[name]), "prompts": len(gold[name])} for name in ranking],
        "pairs": pairs,
        "without_gold": [name for name in samples if name not in gold],
    }


def check_same_prompts(samples: Mapping[str, EvalSamples], dirs: Mapping[str, Path]) -> None:
    """Refuse (a one-line error naming both run dirs) two methods whose held-out prompts differ: their
    per-prompt scores could not be paired."""
    names = list(samples)
    for name in names[1:]:
        first, other = samples[names[0]].prompts, samples[name].prompts
        if first != other:
            at = next((i for i, (a, b) in enumerate(zip(first, other)) if a != b), min(len(first), len(other)))
            raise LoraRlhfError(
                f"{dirs[names[0]]} and {dirs[name]} were evaluated on different prompts ({len(first)} and "
                f"{len(other)}, first difference at prompt {at + 1}), so their scores cannot be paired: evaluate "
                f"both again with the same eval settings (lora-rlhf ablate --methods {names[0]},{name} ...)"
            )


def _has_gold(samples: EvalSamples, name: str) -> bool:
    return samples.gold is not None and EVAL_NAME[METHODS[name].role] in samples.gold


def _pair(a: str, b: str, gold: Mapping[str, Sequence[float]], config: EvalConfig) -> dict[str, Any]:
    """a minus b on the prompts both answered (best-of-N: its first prompts), paired over those prompts."""
    n = min(len(gold[a]), len(gold[b]))
    x, y = gold[a][:n], gold[b][:n]
    lo, hi = paired_diff_ci(x, y, **bootstrap_kwargs(config))
    return {"a": a, "b": b, "diff": mean(x) - mean(y), "ci": [lo, hi], "prompts": n, "excludes_zero": lo > 0 or hi < 0}
