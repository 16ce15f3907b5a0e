"""The programmatic labeler that stands in for InstructGPT's human labelers (§3.4, Appendix B).

It writes demonstrations (the reference answer) and ranks K sampled responses by the gold judge, with
noise: the paper reports that labelers agreed with each other on ~73% of pairwise comparisons, so by
default 27% of pairwise judgements disagree with the gold order.

Noise model (exact): the labeler's ranking is drawn from a Mallows model centred on the gold ranking,
    P(pi) ∝ phi ** d(pi, gold),     d = Kendall tau distance (number of pairs in the other order),
sampled by repeated insertion (Doignon et al. 2004): the j-th best gold item (j = 1..K) is inserted
v = 0..j-1 places above the bottom of the items already placed with probability ∝ phi ** v, which
inverts exactly v pairs. phi is solved for each K so that E[d] / C(K, 2) equals `disagreement`:
every ranking is a permutation (a consistent order, unlike independent pair flips), and the expected
share of pairs ordered against the gold scores is the configured rate. Pairs close in rank flip more
often than distant ones, as with human raters. Equal gold scores are first ordered at random.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence

from lora_rlhf.demo.judge import gold_scores
from lora_rlhf.demo.tasks import Task, parse_task
from lora_rlhf.errors import LoraRlhfError


def expected_disagreement(phi: float, k: int) -> float:
    """Expected share of the C(k, 2) pairs a Mallows(phi) ranking of k items puts in the other order."""
    if k < 2:
        return 0.0
    total = 0.0
    for j in range(1, k + 1):
        weights = [phi**v for v in range(j)]
        total += sum(v * w for v, w in enumerate(weights)) / sum(weights)
    return total / (k * (k - 1) / 2)


@functools.lru_cache(maxsize=256)
def mallows_phi(disagreement: float, k: int) -> float:
    """The phi in [0, 1] whose Mallows model disagrees with its centre on `disagreement` of pairs (bisection)."""
    if not 0.0 <= disagreement <= 0.5:
        raise LoraRlhfError(f"demo.disagreement: {disagreement!r} must be in [0, 0.5] (0.5 = random rankings)")
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        if expected_disagreement(mid, k) < disagreement:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def mallows_order(center: Sequence[int], phi: float, rng: random.Random) -> list[int]:
    """A Mallows(phi) sample around `center` (items best first), by repeated insertion; best first."""
    order: list[int] = []
    for j, item in enumerate(center):
        weights = [phi**v for v in range(j + 1)]
        # v = items already placed (all better in the centre) that `item` jumps above: v inversions.
        v = rng.choices(range(j + 1), weights=weights)[0] if j else 0
        order.insert(j - v, item)
    return order


# (prompt texts, responses) -> gold scores in [0, 1], aligned.
Judge = Callable[[Sequence[str], Sequence[str]], list[float]]


class Labeler:
    """Writes demonstrations and ranks responses like a human labeler who disagrees at a known rate.

    `judge` is the gold judge it ranks by: the toy families' (demo/judge.py) by default, IFEval's checkers for
    the IFEval-style task (ifeval/judge.py).
    """

    def __init__(
        self, disagreement: float = 0.27, seed: int = 0, judge: Judge = gold_scores, *, ties: bool = False
    ) -> None:
        mallows_phi(disagreement, 2)  # validates the rate with a one-line error
        self.disagreement = disagreement
        self.rng = random.Random(seed)
        self.judge = judge
        self.ties = ties

    def demonstrate(self, task_or_prompt: Task | str) -> str:
        """The ideal response (InstructGPT's labelers wrote demonstrations for SFT, §3.4)."""
        return _task(task_or_prompt).answer

    def rank(self, prompt: str, responses: Sequence[str]) -> list[int]:
        """Ranks of `responses` (0 = best): the gold order, ties at random, then Mallows noise.

        A permutation; with `ties`, responses of equal gold score that the noisy order leaves side by side
        share a rank instead (a tie: their pair carries no preference, rm.ties: skip_pairs). A checker's
        graded score has few levels, so most pairs of a small model's samples are equal in gold: ranked
        apart at random they would be noise the RM must learn around (72% of the pairs of an IFEval-style run).
        """
        scores = self.judge([prompt] * len(responses), list(responses))
        tiebreak = [self.rng.random() for _ in responses]
        center = sorted(range(len(responses)), key=lambda i: (-scores[i], tiebreak[i]))
        order = mallows_order(center, mallows_phi(self.disagreement, len(responses)), self.rng)
        ranks = [0] * len(responses)
        rank = 0
        for position, item in enumerate(order):
            if position and not (self.ties and scores[item] == scores[order[position - 1]]):
                rank += 1
            ranks[item] = rank
        return ranks


def _task(task_or_prompt: Task | str) -> Task:
    if isinstance(task_or_prompt, Task):
        return task_or_prompt
    task = parse_task(task_or_prompt)
    if task is None:
        raise LoraRlhfError(f"the labeler knows no demo task with the prompt {task_or_prompt[:80]!r}")
    return task
