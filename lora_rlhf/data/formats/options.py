"""The data spec's choice of row format, and the options of the public preference formats (issue 28)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from lora_rlhf.errors import LoraRlhfError

# "auto" reads the first row and says in the log which format it chose; "rankings" is the project's own rows
# ({prompt, responses, ranks}, {prompt, chosen, rejected}, hh-rlhf {chosen, rejected}), read as they are.
Format = Literal["auto", "rankings", "oasst_trees", "oasst_messages", "ultrafeedback", "nectar"]
Aspect = Literal["helpfulness", "honesty", "instruction_following", "truthfulness"]
ASPECTS: tuple[str, ...] = ("helpfulness", "honesty", "instruction_following", "truthfulness")


@dataclasses.dataclass
class OasstOptions:
    """Which Open Assistant messages make rankings (formats oasst_trees and oasst_messages).

    A message that is left out takes every reply below it along: its subtree has no conversation to hang on.
    """

    # Keep only messages whose `lang` is one of these codes (e.g. [en, de]); null: every language.
    lang: list[str] | None = None
    # Keep messages marked `deleted: true` (false: leave them out).
    deleted: bool = False
    # Keep messages whose review failed (`review_result: false`; false: leave them out).
    failed_review: bool = False
    # Assistant replies without a `rank` beside ranked siblings: "drop" them, or rank them "last", tied below
    # every ranked one (OASST does not say they are worse; ties need rm.ties: skip_pairs).
    unranked: Literal["drop", "last"] = "drop"

    def __post_init__(self) -> None:
        if self.lang is not None and not self.lang:
            raise LoraRlhfError("lang: [] keeps no message; give language codes, or null for every language")


@dataclasses.dataclass
class UltraFeedbackOptions:
    """How UltraFeedback completions are ordered (format ultrafeedback)."""

    # "overall_score" (the critique's 1-10 score), "fine_grained" (the mean of the four aspects' 1-5 ratings,
    # "N/A" ratings left out), or one aspect's rating. A completion without a score is left out of its ranking.
    score: Literal["overall_score", "fine_grained", Aspect] = "overall_score"
