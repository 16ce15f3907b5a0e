"""Eval statistics by hand: bootstrap intervals, win-rate and cluster intervals, best-of-N picks, the
token-weighted LM loss, RM pair outcomes, and EvalConfig's checks. No model is loaded here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.eval import EvalConfig, win_rate
from lora_rlhf.eval.best_of_n import select_best
from lora_rlhf.eval.lm_loss import token_weighted_mean
from lora_rlhf.eval.result import PairAccuracy
from lora_rlhf.eval.rm_accuracy import pair_accuracy, pair_outcomes
from lora_rlhf.eval.stats import bootstrap_ci, cluster_accuracy_ci, paired_diff_ci, win_rate_ci


def test_bootstrap_of_constant_values_is_a_point_and_a_single_value_is_itself():
    lo, hi = bootstrap_ci([0.3] * 20)
    assert lo == hi == pytest.approx(0.3)
    assert bootstrap_ci([1.7]) == (1.7, 1.7)
    assert cluster_accuracy_ci([[1.0, 0.0, 1.0]]) == (
        pytest.approx(2 / 3),
        (pytest.approx(2 / 3), pytest.approx(2 / 3)),
    )


def test_empty_inputs_and_bad_settings_raise_clear_errors():
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="equally long"):
        paired_diff_ci([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least one value"):
        win_rate_ci([], [])
    with pytest.raises(ValueError, match="at least one pair"):
        cluster_accuracy_ci([[], []])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0, 2.0], confidence=1.0)
    with pytest.raises(ValueError, match="samples"):
        bootstrap_ci([1.0, 2.0], samples=0)


def test_bootstrap_is_deterministic_given_the_seed_and_brackets_the_mean():
    values = np.random.default_rng(1).normal(size=40)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)
    lo, hi = bootstrap_ci(values)
    assert lo < values.mean() < hi
    narrow = bootstrap_ci(values, confidence=0.5)
    assert lo < narrow[0] < narrow[1] < hi


def test_pairing_separates_a_consistent_gain_that_unpaired_intervals_cannot():
    # Prompts differ wildly in difficulty (sd 3); model a is better by 0.5 on every prompt (+ small noise).
    rng = np.random.default_rng(0)
    difficulty = rng.normal(scale=3.0, size=30)
    a, b = difficulty + 0.5 + rng.normal(scale=0.1, size=30), difficulty
    lo, hi = paired_diff_ci(a, b)
    assert 0 < lo < 0.5 < hi
    a_lo, a_hi = bootstrap_ci(a)
    b_lo, b_hi = bootstrap_ci(b)
    assert a_lo < b_hi and b_lo < a_hi  # the two means' own intervals overlap: unpaired, the gain looks like noise


def test_win_rate_interval_contains_the_point_estimate_and_ties_count_half():
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 3, size=50).astype(float), rng.integers(0, 3, size=50).astype(float)  # many ties
    lo, hi = win_rate_ci(a, b)
    assert 0 <= lo <= win_rate(list(a), list(b)) <= hi <= 1
    assert win_rate_ci([1, 1, 1], [1, 1, 1]) == (0.5, 0.5)
    assert win_rate_ci([2, 3, 4], [1, 1, 1]) == (1.0, 1.0)


def test_cluster_accuracy_weighs_pairs_and_widens_the_interval_for_correlated_pairs():
    accuracy, (lo, hi) = cluster_accuracy_ci([[1, 1, 1], [0], [1, 0.5], []])
    assert accuracy == pytest.approx(4.5 / 6) and lo <= accuracy <= hi
    # 10 prompts whose 10 pairs are all right or all wrong: only 10 independent outcomes, not 100.
    clusters = [[1.0] * 10, [0.0] * 10] * 5
    accuracy, (lo, hi) = cluster_accuracy_ci(clusters)
    naive_lo, naive_hi = bootstrap_ci([x for c in clusters for x in c])
    assert accuracy == 0.5 and hi - lo > 2 * (naive_hi - naive_lo)


def test_bootstrap_interval_roughly_covers_the_true_mean():
    rng = np.random.default_rng(5)
    trials = 200
    covered = sum(
        lo <= 0 <= hi for lo, hi in (bootstrap_ci(rng.normal(size=30), samples=400, seed=t) for t in range(trials))
    )
    assert 0.85 <= covered / trials <= 0.99  # nominal 0.95; the percentile method runs a little short at n = 30


def test_select_best_takes_each_prompts_highest_score_first_on_ties():
    scores = [[0.1, 0.5, 0.2], [3.0, 3.0, 1.0], [-1.0, -2.0, -0.5]]
    assert select_best(scores).tolist() == [1, 0, 2]
    assert select_best(torch.tensor(scores)).tolist() == [1, 0, 2]
    assert select_best([[7.0]]).tolist() == [0]
    with pytest.raises(ValueError, match="score matrix"):
        select_best([1.0, 2.0])


def test_token_weighted_mean_counts_every_real_token_once_and_ignores_nan_padding():
    nlls = [torch.tensor([[1.0, 2.0, float("nan")]]), torch.tensor([[4.0], [float("nan")]])]
    masks = [torch.tensor([[1, 1, 0]]), torch.tensor([[1], [0]])]
    assert token_weighted_mean(nlls, masks) == pytest.approx(7 / 3)  # not the mean of batch means (1.5 + 4) / 2
    assert math.isnan(token_weighted_mean([torch.ones(1, 2)], [torch.zeros(1, 2)]))


def test_pair_outcomes_by_ranks_and_by_gold():
    # ranks 0 = best: response 0 best, then 2, then 1; RM scores order 0 > 2 > 1 except a tie 2 = 0.
    assert pair_outcomes([0, 2, 1], [3.0, 1.0, 2.0], higher_is_better=False) == [1.0, 1.0, 1.0]
    assert pair_outcomes([0, 2, 1], [2.0, 1.0, 2.0], higher_is_better=False) == [1.0, 0.5, 1.0]
    assert pair_outcomes([0, 0, 1], [1.0, 2.0, 3.0], higher_is_better=False) == [0.0, 0.0]  # the tied pair is skipped
    # gold: higher is better, equal gold skipped
    assert pair_outcomes([5.0, 3.0, 5.0], [0.0, 1.0, 2.0], higher_is_better=True) == [0.0, 1.0]

    assert pair_accuracy([[], []], EvalConfig()) == PairAccuracy(None, None, 0)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("best_of_n", -1),
        ("best_of_n_temperature", 0.0),
        ("lm_max_length", 1),
        ("rankings_max_length", 0),
        ("bootstrap_samples", 0),
        ("confidence", 1.0),
        ("confidence", 0.0),
    ],
)
def test_eval_config_rejects_bad_values_naming_the_key(key, value):
    with pytest.raises(LoraRlhfError, match=f"^{key}: {value!r}"):
        EvalConfig(**{key: value})
