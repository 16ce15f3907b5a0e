"""Win rates between models scored on the same prompts (the analogue of InstructGPT's Fig. 1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations


def win_rate(a: Sequence[float], b: Sequence[float]) -> float:
    """Fraction of prompts where `a` scores higher than `b`, a tie counting one half.

    InstructGPT reports how often labelers prefer a model's output to a baseline's; with a gold judge
    the preference is the higher gold score.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"win_rate needs two equally long, non-empty score lists, got {len(a)} and {len(b)}")
    wins = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b))
    return wins / len(a)


def pairwise_win_rates(scores: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """{"sft": [...], "ppo": [...], ...} -> {"sft_vs_base": x, "ppo_vs_base": y, "ppo_vs_sft": z, ...}.

    Pairs follow the mapping's order, later models against earlier ones ("ppo_vs_sft" = ppo wins).
    """
    names = list(scores)
    return {
        f"{later}_vs_{earlier}": win_rate(scores[later], scores[earlier]) for earlier, later in combinations(names, 2)
    }


def mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")
