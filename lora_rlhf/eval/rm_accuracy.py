"""The reward model's pairwise accuracy on held-out rankings, with a bootstrap over prompts.

InstructGPT (§3.5, §4) judges its RM by how often it orders a held-out labeler comparison correctly. The
RM stage logs that figure on its own held-out split; here it is measured on a file of rankings given at
eval time, and (with a gold judge) also against the gold ordering, which the labels only approximate
(the demo's labeler disagrees with the gold judge at a configured rate, as InstructGPT's labelers agreed
with each other ~73% of the time).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from lora_rlhf.data.prompts import prompt_text
from lora_rlhf.data.rankings import Ranking, RankingExample, encode_ranking, kept_once_cut, parse_ranking
from lora_rlhf.data.rows import RowReport, parse_rows
from lora_rlhf.data.sources import load_rows
from lora_rlhf.eval import stats
from lora_rlhf.eval.config import EvalConfig
from lora_rlhf.eval.result import PairAccuracy, RMAccuracy
from lora_rlhf.eval.scoring import GoldFn, bootstrap_kwargs, reward_scores
from lora_rlhf.models.roles import RoleStack

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ScoredRanking:
    ranking: Ranking
    scores: list[float]  # K, RM score of each response


def pair_outcomes(order: Sequence[float], scores: Sequence[float], *, higher_is_better: bool) -> list[float]:
    """One outcome per pair of responses that `order` ranks apart: 1 if the RM scores the better one
    higher, 0.5 if the RM scores them equally, 0 otherwise.

    Args:
        order: (K,) ranks (0 = best, `higher_is_better=False`) or gold scores (`higher_is_better=True`);
            pairs with equal `order` carry no preference and are skipped.
        scores: (K,) RM scores of the same responses.
    Returns:
        outcomes of the untied pairs, i < j in index order.
    """
    if len(order) != len(scores):
        raise ValueError(f"pair_outcomes needs one score per response, got {len(order)} and {len(scores)}")
    outcomes = []
    for i in range(len(order)):
        for j in range(i + 1, len(order)):
            if order[i] == order[j]:
                continue
            i_better = (order[i] > order[j]) == higher_is_better
            better, worse = (scores[i], scores[j]) if i_better else (scores[j], scores[i])
            outcomes.append(1.0 if better > worse else 0.5 if better == worse else 0.0)
    return outcomes


def load_eval_rankings(config: EvalConfig, tokenizer) -> tuple[list[tuple[Ranking, RankingExample]], RowReport]:
    """Every usable row of `config.rankings`, tied pairs kept out and bad rows skipped (and counted)."""
    spec = config.rankings

    def parse(row):
        ranking = parse_ranking(row, "skip_pairs")
        example = encode_ranking(ranking, tokenizer, config.rankings_max_length)
        # Responses identical in the tokens the RM sees score the same: their pair would count 0.5 whatever
        # the RM learnt, so it is left out as in training (issue 29); a row with nothing else is skipped.
        keep, pairs = kept_once_cut(
            example, "skip_pairs", config.rankings_max_length, length_key="eval.rankings_max_length"
        )
        if len(keep) == len(ranking.responses):
            return ranking, example
        responses, ranks = [ranking.responses[i] for i in keep], [ranking.ranks[i] for i in keep]
        ids = [example.response_ids[i] for i in keep]
        kept = Ranking(ranking.prompt, responses, ranks, ranking.no_signal_pairs + pairs)
        return kept, dataclasses.replace(example, response_ids=ids, ranks=ranks, no_signal_pairs=kept.no_signal_pairs)

    rows, report = parse_rows(load_rows(spec), parse, spec.display(), "skip")
    report.truncated = sum(example.truncated for _, example in rows)
    report.no_signal_pairs = sum(example.no_signal_pairs for _, example in rows)
    report.log()
    return rows, report


def score_rankings(
    stack: RoleStack, rows: Sequence[tuple[Ranking, RankingExample]], batch_size: int
) -> list[ScoredRanking]:
    """RM score of every response of every ranking, all responses of all rows batched together."""
    sequences = [example.prompt_ids + ids for _, example in rows for ids in example.response_ids]
    starts = [len(example.prompt_ids) for _, example in rows for _ in example.response_ids]
    flat = iter(reward_scores(stack, sequences, batch_size, prompt_lengths=starts))
    return [ScoredRanking(ranking, [next(flat) for _ in ranking.responses]) for ranking, _ in rows]


def gold_orders(scored: Sequence[ScoredRanking], gold_fn: GoldFn) -> list[list[float]]:
    """Gold score of every response, in one call of the judge."""
    prompts = [prompt_text(s.ranking.prompt) for s in scored for _ in s.ranking.responses]
    gold = iter(float(g) for g in gold_fn(prompts, [r for s in scored for r in s.ranking.responses]))
    return [[next(gold) for _ in s.ranking.responses] for s in scored]


def pair_accuracy(outcomes: Sequence[Sequence[float]], config: EvalConfig) -> PairAccuracy:
    """Accuracy over every prompt's pair outcomes, with its interval clustered by prompt (None without pairs)."""
    pairs = sum(len(o) for o in outcomes)
    if not pairs:
        return PairAccuracy(None, None, 0)
    accuracy, interval = stats.cluster_accuracy_ci(outcomes, **bootstrap_kwargs(config))
    return PairAccuracy(accuracy, interval, pairs)


def rm_accuracy(stack: RoleStack, config: EvalConfig, gold_fn: GoldFn | None) -> RMAccuracy:
    """The RM's accuracy measured on `config.rankings` with the "reward" role (against the gold judge too)."""
    rows, report = load_eval_rankings(config, stack.tokenizer)
    scored = score_rankings(stack, rows, config.batch_size)
    labels = [pair_outcomes(s.ranking.ranks, s.scores, higher_is_better=False) for s in scored]
    gold = None
    if gold_fn is not None and scored:
        orders = gold_orders(scored, gold_fn)
        gold = pair_accuracy(
            [pair_outcomes(g, s.scores, higher_is_better=True) for g, s in zip(orders, scored)], config
        )
    return RMAccuracy("rankings", pair_accuracy(labels, config), gold, rows=len(rows), skipped_rows=report.dropped)
