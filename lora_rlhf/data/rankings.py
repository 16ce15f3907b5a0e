"""Rankings for the reward model (InstructGPT §3.5): K responses to one prompt, ranked by a labeler.

Accepted rows (docs/design.md, "Data formats"; a "prompt" is a string or, as in TRL's conversational format,
the messages before the response):
    {"prompt", "responses": [K strings], "ranks": [K ints, 0 = best]}
    {"prompt", "chosen", "rejected"}                      (K = 2)
    {"chosen", "rejected"}  Anthropic hh-rlhf transcripts; their common prefix up to the last
                            "Assistant:" turn is the prompt
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from lora_rlhf.data.chat import Prompt, hh_messages, render_prompt
from lora_rlhf.data.rows import BadRow, OnBadRow, RowReport, parse_rows, prompt_field, text_field
from lora_rlhf.data.sources import DatasetSpec, load_rows
from lora_rlhf.data.split import hold_out

Ties = Literal["error", "skip_pairs"]


@dataclasses.dataclass
class Ranking:
    prompt: Prompt
    responses: list[str]  # K >= 2
    ranks: list[int]  # K, 0 = best; equal ranks are ties (their pair carries no preference)
    no_signal_pairs: int = 0  # pairs ranked apart whose responses were identical, left out (ties "skip_pairs")


@dataclasses.dataclass
class RankingExample:
    prompt_ids: list[int]
    response_ids: list[list[int]]  # K responses, each ending in EOS unless truncated
    ranks: list[int]
    truncated: bool = False  # some response was cut to fit max_length (never to nothing)
    no_signal_pairs: int = 0  # pairs ranked apart that the model would see identical, left out (ties "skip_pairs")


def parse_ranking(row: Mapping[str, Any], ties: Ties, *, section: str = "rm") -> Ranking:
    """One row in any of the three formats; BadRow names the field at fault.

    `section` is the recipe section whose ties and max_length the remedies name ("rm" or "dpo").

    A format is recognised by its non-null fields: a JSON file read through Arrow gives every row
    every column of the file, null where the row lacks it.
    """
    if row.get("responses") is not None or row.get("ranks") is not None:
        ranking = Ranking(prompt_field(row), _responses(row), _ranks(row))
        if len(ranking.ranks) != len(ranking.responses):
            raise BadRow(f"field 'ranks' has {len(ranking.ranks)} entries for {len(ranking.responses)} responses")
    elif row.get("chosen") is not None or row.get("rejected") is not None:
        if row.get("prompt") is not None:
            prompt = prompt_field(row)
            chosen, rejected = text_field(row, "chosen"), text_field(row, "rejected")
        else:
            prompt, chosen, rejected = split_transcripts(text_field(row, "chosen"), text_field(row, "rejected"))
        ranking = Ranking(prompt, [chosen, rejected], [0, 1])
    else:
        raise BadRow(
            "missing fields: expected {prompt, responses, ranks}, {prompt, chosen, rejected} or {chosen, rejected}"
        )
    _check_ranks(ranking.ranks, ties, section)
    return _drop_identical(ranking, ties, section)


def _drop_identical(ranking: Ranking, ties: Ties, section: str) -> Ranking:
    """Identical responses ranked apart carry no preference (issue 12: chosen == rejected trained "accuracy 1").

    With ties "error" such a row is bad; with "skip_pairs" the worse-ranked copy is dropped, which skips
    their pair (its other pairs repeat the better copy's, or contradict them). A row left with fewer than
    two distinct responses, or with no untied pair, is a bad row.
    """
    texts = [response.strip() for response in ranking.responses]

    def same(i: int, j: int) -> str:
        return f"are identical ({texts[i][:40]!r})"

    remedy = f"set {section}.ties: skip_pairs to train on the other pairs"
    keep, pairs = _first_copies(texts, ranking.ranks, ties, same, remedy)
    if len(keep) == len(ranking.responses):
        return ranking
    return Ranking(
        ranking.prompt,
        [ranking.responses[i] for i in keep],
        [ranking.ranks[i] for i in keep],
        ranking.no_signal_pairs + pairs,
    )


def _first_copies(keys: list, ranks: list[int], ties: Ties, same, remedy: str, hint: str = "") -> tuple[list[int], int]:
    """The indices to keep (the best-ranked copy of each key) and how many pairs ranked apart shared a key.

    `same(i, j)` says how responses i and j are identical; `remedy` what the user can do about a pair of them,
    `hint` about a row of nothing else.
    """
    fields = "all responses" if len(keys) > 2 else "the two responses"
    order = sorted(range(len(keys)), key=lambda i: ranks[i])
    first: dict = {}
    for i in order:
        j = first.setdefault(keys[i], i)
        if j == i or ranks[i] == ranks[j]:
            continue
        if len(set(keys)) < 2:
            raise BadRow(f"{fields} {same(j, i)}: no preference to learn from{hint}")
        if ties == "error":
            pair = f"responses[{min(i, j)}] and responses[{max(i, j)}]" if len(keys) > 2 else "both"
            raise BadRow(f"{pair} {same(j, i)} but ranked apart ({remedy})")
    pairs = sum(keys[i] == keys[j] and ranks[i] != ranks[j] for i in range(len(keys)) for j in range(i + 1, len(keys)))
    keep = sorted(first.values())
    if len(keep) < len(keys) and len({ranks[i] for i in keep}) < 2:
        raise BadRow(f"{fields}: no untied pair of distinct responses left to learn from")
    return keep, pairs


def _responses(row: Mapping[str, Any]) -> list[str]:
    responses = row.get("responses")
    if not isinstance(responses, list):
        raise BadRow("field 'responses' must be a list of strings")
    if len(responses) < 2:
        raise BadRow(f"field 'responses' has K = {len(responses)}; a ranking needs K >= 2")
    for i, response in enumerate(responses):
        if not isinstance(response, str):
            raise BadRow(f"field 'responses[{i}]' is {type(response).__name__}, expected a string")
        if not response.strip():
            raise BadRow(f"field 'responses[{i}]' is empty")
    return list(responses)


def _ranks(row: Mapping[str, Any]) -> list[int]:
    ranks = row.get("ranks")
    if not isinstance(ranks, list) or not all(isinstance(r, int) and not isinstance(r, bool) for r in ranks):
        raise BadRow("field 'ranks' must be a list of integers (0 = best)")
    return list(ranks)


def _check_ranks(ranks: list[int], ties: Ties, section: str) -> None:
    k = len(ranks)
    if len(set(ranks)) == k:
        if sorted(ranks) != list(range(k)):
            raise BadRow(f"field 'ranks' {ranks} is not a permutation of 0..{k - 1}")
        return
    if any(r < 0 or r >= k for r in ranks):
        raise BadRow(f"field 'ranks' {ranks} has values outside 0..{k - 1}")
    if ties == "error":
        raise BadRow(f"field 'ranks' {ranks} has ties (set {section}.ties: skip_pairs to train on the untied pairs)")
    if len(set(ranks)) == 1:
        raise BadRow(f"field 'ranks' {ranks}: every response is tied, no pair to learn from")


def flatten_ranking(ranking: Ranking) -> list[dict[str, Any]]:
    """The ranking's untied pairs as {"prompt", "chosen", "rejected"} rows, one per pair (C(K,2) without ties).

    The view of a trainer that shuffles comparisons into independent examples (TRL's RewardTrainer); InstructGPT
    §3.5 keeps them as one batch element instead, each response scored once (rm/loss.py). Pass a ranking from
    `parse_ranking`, so the rm's tie policy (equal ranks, identical responses) has already applied.
    """
    k = len(ranking.ranks)
    return [
        {"prompt": ranking.prompt, "chosen": ranking.responses[i], "rejected": ranking.responses[j]}
        for i in range(k)
        for j in range(k)
        if ranking.ranks[i] < ranking.ranks[j]
    ]


def split_transcripts(chosen: str, rejected: str) -> tuple[Prompt, str, str]:
    """hh-rlhf: the shared prefix up to the last "Assistant:" is the prompt, as chat messages."""
    common = 0
    while common < min(len(chosen), len(rejected)) and chosen[common] == rejected[common]:
        common += 1
    cut = chosen.rfind("\n\nAssistant:", 0, common + 1)
    if cut < 0:
        raise BadRow("fields 'chosen'/'rejected' share no '\\n\\nAssistant:' turn to split the prompt at")
    cut += len("\n\nAssistant:")
    prompt_text, answer_chosen, answer_rejected = chosen[:cut], chosen[cut:].strip(), rejected[cut:].strip()
    if not answer_chosen or not answer_rejected:
        raise BadRow("field 'chosen' or 'rejected' has an empty final response")
    return hh_messages(prompt_text), answer_chosen, answer_rejected


def encode_ranking(ranking: Ranking, tokenizer, max_length: int) -> RankingExample:
    prompt_ids = tokenizer(render_prompt(tokenizer, ranking.prompt), add_special_tokens=False).input_ids
    room = max_length - len(prompt_ids)
    if room < 1:
        raise BadRow(f"prompt longer than max_length ({len(prompt_ids)} tokens, max_length {max_length})")
    full = [tokenizer(r, add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for r in ranking.responses]
    # room >= 1 keeps at least one response token: truncation never cuts a response to nothing.
    truncated = any(len(ids) > room for ids in full)
    return RankingExample(prompt_ids, [ids[:room] for ids in full], ranking.ranks, truncated, ranking.no_signal_pairs)


def drop_identical_after_truncation(
    example: RankingExample, ties: Ties, max_length: int, *, section: str = "rm"
) -> RankingExample:
    """The identical-responses rule (`_drop_identical`) on the token ids the model sees (issue 29).

    Responses that differ only beyond max_length are identical once cut, and a pair of them trains to
    nothing (loss log 2): under ties "error" the row is bad, under "skip_pairs" the worse-ranked copy goes.
    """
    keep, pairs = kept_once_cut(example, ties, max_length, section=section)
    if len(keep) == len(example.response_ids):
        return example
    return dataclasses.replace(
        example,
        response_ids=[example.response_ids[i] for i in keep],
        ranks=[example.ranks[i] for i in keep],
        no_signal_pairs=example.no_signal_pairs + pairs,
    )


def kept_once_cut(
    example: RankingExample, ties: Ties, max_length: int, *, section: str = "rm", length_key: str | None = None
) -> tuple[list[int], int]:
    """(indices of the responses `drop_identical_after_truncation` keeps, pairs it leaves out); `length_key` is
    the recipe key of `max_length` a remedy names (default `{section}.max_length`)."""
    keys = [tuple(ids) for ids in example.response_ids]
    room = max_length - len(example.prompt_ids)
    length_key = length_key or f"{section}.max_length"

    def same(i: int, j: int) -> str:
        return (
            f"are identical in the {len(keys[i])} tokens the model sees "
            f"(max_length {max_length} leaves {room} after the prompt)"
        )

    remedy = f"raise {length_key}, or set {section}.ties: skip_pairs to train on the other pairs"
    return _first_copies(keys, example.ranks, ties, same, remedy, f" (raise {length_key})")


def load_ranking_examples(
    spec: DatasetSpec,
    tokenizer,
    max_length: int,
    *,
    ties: Ties = "error",
    on_bad_row: OnBadRow = "error",
    section: str = "rm",
) -> tuple[list[RankingExample], RowReport]:
    """Parse, validate and tokenize every ranking row of `spec`; the report counts dropped and truncated rows,
    and the pairs left out because their responses were identical (in text, or once truncated)."""

    def encode(row: Mapping[str, Any]) -> RankingExample:
        example = encode_ranking(parse_ranking(row, ties, section=section), tokenizer, max_length)
        return drop_identical_after_truncation(example, ties, max_length, section=section)

    examples, report = parse_rows(load_rows(spec), encode, spec.display(), on_bad_row)
    report.truncated = sum(e.truncated for e in examples)
    report.no_signal_pairs = sum(e.no_signal_pairs for e in examples)
    return examples, report


def load_ranking_splits(
    data: DatasetSpec,
    eval_data: DatasetSpec | None,
    tokenizer,
    max_length: int,
    *,
    ties: Ties,
    on_bad_row: OnBadRow,
    eval_fraction: float,
    seed: int,
    section: str = "rm",
) -> tuple[list[RankingExample], list[RankingExample], RowReport]:
    """(train, held-out, the training file's report) as the RM and DPO stages read a rankings file: `eval_data`
    when given, else `eval_fraction` of `data` held out by `seed`; each file's report is logged."""

    def load(spec: DatasetSpec) -> tuple[list[RankingExample], RowReport]:
        examples, report = load_ranking_examples(
            spec, tokenizer, max_length, ties=ties, on_bad_row=on_bad_row, section=section
        )
        report.log()
        return examples, report

    examples, report = load(data)
    if eval_data is not None:
        return examples, load(eval_data)[0], report
    train, held = hold_out(examples, eval_fraction, seed)
    return train, held, report
