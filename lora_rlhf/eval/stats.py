"""Bootstrap confidence intervals for the evaluation's figures (Efron & Tibshirani 1993, percentile method).

Every figure eval reports is a mean over a few dozen held-out prompts, so a 0.03 gap between two models
can be noise. These intervals resample prompts with replacement; where two models answered the same
prompts the resampling is paired (both models' scores of a prompt move together), which removes the
prompt-difficulty variance that an unpaired comparison would charge to the models.

Pure functions on plain sequences; deterministic given `seed` (a numpy Generator, no global state).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Interval = tuple[float, float]
# Resamples drawn per block, so memory stays at (_BLOCK, n) indices however many samples are asked for.
_BLOCK = 256


def bootstrap_ci(values: Sequence[float], *, samples: int = 2000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean of `values`.

    Args:
        values: (n,) one figure per prompt.
        samples: bootstrap resamples (each draws n values with replacement).
        confidence: coverage of the two-sided interval, e.g. 0.95 -> the 2.5% and 97.5% percentiles.
    Returns:
        (lo, hi); (x, x) for a single value or constant values.
    """
    x = _as_array(values, "bootstrap_ci")
    return _interval(lambda idx: x[idx].mean(axis=1), len(x), samples, confidence, seed)


def paired_diff_ci(
    a: Sequence[float], b: Sequence[float], *, samples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """Percentile bootstrap interval of mean(a - b), resampling prompts jointly.

    Args:
        a, b: (n,) scores of two models on the same n prompts, in the same order.
    Returns:
        (lo, hi); an interval that excludes 0 says the difference is unlikely to be prompt sampling noise.
    """
    x, y = _pair(a, b, "paired_diff_ci")
    return bootstrap_ci(x - y, samples=samples, confidence=confidence, seed=seed)


def win_rate_ci(
    a: Sequence[float], b: Sequence[float], *, samples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """Paired bootstrap interval of the win rate of `a` over `b` (a tie counts 1/2, as compare.win_rate).

    Args:
        a, b: (n,) scores of two models on the same n prompts, in the same order.
    Returns:
        (lo, hi) within [0, 1]; an interval that excludes 0.5 says one model is preferred beyond noise.
    """
    x, y = _pair(a, b, "win_rate_ci")
    outcomes = np.where(x > y, 1.0, np.where(x == y, 0.5, 0.0))  # (n,) per-prompt win, the mean is the win rate
    return bootstrap_ci(outcomes, samples=samples, confidence=confidence, seed=seed)


def cluster_accuracy_ci(
    correct_per_cluster: Sequence[Sequence[float]], *, samples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, Interval]:
    """Pairwise accuracy with a bootstrap over clusters (prompts) rather than over pairs.

    The K responses of one prompt give K(K-1)/2 pairs that share the prompt and responses, so they are
    correlated; resampling pairs as if independent would make the interval too narrow. Resampling whole
    prompts keeps each prompt's pairs together.

    Args:
        correct_per_cluster: per prompt, one outcome per pair in [0, 1] (1 = ordered correctly, 0.5 = tie).
            Prompts without pairs are ignored.
    Returns:
        (accuracy, (lo, hi)): accuracy = total correct / total pairs (every pair weighs the same); the
        interval is the percentile interval of that ratio over resampled prompts.
    """
    clusters = [list(c) for c in correct_per_cluster if len(c)]
    if not clusters:
        raise ValueError("cluster_accuracy_ci needs at least one cluster with at least one pair, got none")
    correct = np.array([sum(c) for c in clusters], dtype=np.float64)  # (C,)
    pairs = np.array([len(c) for c in clusters], dtype=np.float64)  # (C,)
    accuracy = float(correct.sum() / pairs.sum())
    interval = _interval(
        lambda idx: correct[idx].sum(axis=1) / pairs[idx].sum(axis=1), len(clusters), samples, confidence, seed
    )
    return accuracy, interval


def _interval(
    statistic: Callable[[np.ndarray], np.ndarray], n: int, samples: int, confidence: float, seed: int
) -> Interval:
    """Percentile interval of `statistic` over `samples` resamples; `statistic` maps (S, n) indices to (S,)."""
    if samples < 1:
        raise ValueError(f"bootstrap samples must be a positive integer, got {samples!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    if n == 1:
        value = float(statistic(np.zeros((1, 1), dtype=np.int64))[0])
        return value, value
    rng = np.random.default_rng(seed)
    stats = np.concatenate(
        [statistic(rng.integers(0, n, size=(min(_BLOCK, samples - start), n))) for start in range(0, samples, _BLOCK)]
    )
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(stats, [tail, 1.0 - tail])
    return float(lo), float(hi)


def _as_array(values: Sequence[float], name: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError(f"{name} needs at least one value, got an empty sequence")
    return x


def _pair(a: Sequence[float], b: Sequence[float], name: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_array(a, name), _as_array(b, name)
    if x.shape != y.shape:
        raise ValueError(f"{name} needs two equally long score lists (one score per prompt), got {x.size} and {y.size}")
    return x, y
