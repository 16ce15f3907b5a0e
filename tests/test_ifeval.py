"""IFEval scoring: every instruction type wired to Google's checker, the four accuracies, the intervals."""

from __future__ import annotations

import json
import re

import pytest

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.eval.ifeval import intervals, read_responses, summarize, write_responses
from lora_rlhf.ifeval import benchmark, checkers
from lora_rlhf.ifeval.checkers import Verdicts

# instruction id -> (checker kwargs, a response that follows it, one that does not), written by hand.
CASES = {
    "punctuation:no_comma": ({}, "Hello world. No commas here.", "Hello, world."),
    "change_case:english_lowercase": ({}, "all of this is lowercase english.", "Not all of this is lowercase."),
    "change_case:english_capital": ({}, "ALL OF THIS IS IN CAPITAL LETTERS.", "Not all capitals here."),
    "change_case:capital_word_frequency": (
        {"capital_frequency": 2, "capital_relation": "at least"},
        "THE BIG dog barked.",
        "The big dog barked.",
    ),
    "startend:quotation": ({}, '"A reply inside quotation marks."', "A reply without them."),
    "startend:end_checker": (
        {"end_phrase": "Any other questions?"},
        "Here is the plan. Any other questions?",
        "Any other questions? Then we start.",
    ),
    "detectable_format:title": ({}, "<<Morning Walks>>\nA walk is good.", "Morning Walks\nA walk is good."),
    "detectable_content:postscript": (
        {"postscript_marker": "P.S."},
        "See you soon.\nP.S. Bring an umbrella.",
        "See you soon.",
    ),
    "detectable_content:number_placeholders": (
        {"num_placeholders": 2},
        "Meet [name] at [address].",
        "Meet [name] at the station.",
    ),
    "keywords:existence": ({"keywords": ["apple", "river"]}, "An apple fell into the river.", "An apple fell."),
    "keywords:frequency": (
        {"keyword": "cat", "frequency": 2, "relation": "at least"},
        "The cat saw another cat.",
        "The cat slept.",
    ),
    "keywords:forbidden_words": ({"forbidden_words": ["dog"]}, "A cat slept.", "A dog slept."),
    "keywords:letter_frequency": (
        {"letter": "z", "let_frequency": 2, "let_relation": "at least"},
        "The zebra dozed.",
        "The zebra slept.",
    ),
    "language:response_language": (
        {"language": "en"},
        "This is a plain sentence written in English for the language checker.",
        "Ceci est une phrase écrite en français pour le vérificateur de langue.",
    ),
    "length_constraints:number_sentences": (
        {"num_sentences": 2, "relation": "less than"},
        "Just one sentence here.",
        "One. Two. Three.",
    ),
    "length_constraints:number_paragraphs": ({"num_paragraphs": 2}, "First part.\n***\nSecond part.", "One part."),
    "length_constraints:number_words": (
        {"num_words": 5, "relation": "at least"},
        "one two three four five six",
        "one two",
    ),
    "length_constraints:nth_paragraph_first_word": (
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
        "First we pack.\n\nThen we leave.",
        "First we pack.\n\nAfter that we leave.",
    ),
    "detectable_format:number_bullet_lists": ({"num_bullets": 2}, "* milk\n* bread", "* milk"),
    "detectable_format:multiple_sections": (
        {"section_spliter": "Section", "num_sections": 2},
        "Section 1\nStart here.\nSection 2\nEnd here.",
        "Section 1\nStart here.",
    ),
    "detectable_format:number_highlighted_sections": (
        {"num_highlights": 2},
        "Keep *calm* and *carry on*.",
        "Keep *calm* and carry on.",
    ),
    "detectable_format:json_format": ({}, '{"answer": "yes"}', "answer: yes"),
    "detectable_format:constrained_response": ({}, "My answer is yes.", "Yes, certainly."),
    "combination:two_responses": ({}, "First answer.\n******\nA second answer.", "Only one answer."),
    "combination:repeat_prompt": (
        {"prompt_to_repeat": "Write a note to Sam."},
        "Write a note to Sam. Dear Sam, see you at noon.",
        "Dear Sam, see you at noon.",
    ),
}


def test_every_ifeval_instruction_has_a_hand_written_case():
    assert set(CASES) == set(checkers.registry())
    assert len(CASES) == 25


@pytest.mark.parametrize("instruction_id", sorted(CASES))
def test_each_instruction_is_wired_to_its_checker(instruction_id):
    kwargs, good, bad = CASES[instruction_id]
    prompt = kwargs.get("prompt_to_repeat", "Write something.")
    assert checkers.check(prompt, [instruction_id], [kwargs], good) == Verdicts((True,), (True,))
    verdicts = checkers.check(prompt, [instruction_id], [kwargs], bad)
    assert verdicts.strict == (False,)


def test_loose_reads_the_answer_without_its_first_line_or_asterisks():
    # A chatty first line breaks "no commas" as written; the loose reading drops it (evaluation_lib's rule).
    verdicts = checkers.check("x", ["punctuation:no_comma"], [{}], "Sure, here it is:\nno commas in this part")
    assert verdicts == Verdicts((False,), (True,))
    bold = checkers.check("x", ["startend:quotation"], [{}], '**"quoted"**')
    assert bold == Verdicts((False,), (True,))


def test_language_verdicts_are_a_function_of_the_text():
    # langdetect draws at random unless seeded: unseeded, "de mo ji la" reads as Swahili on some calls and as
    # Spanish on others, so strict could pass where loose failed (CI saw prompt strict 0.33 > loose 0.17).
    for language in ("sw", "es"):
        verdicts = {checkers.check("x", ["language:response_language"], [{"language": language}], "de mo ji la")}
        verdicts |= {
            checkers.check("x", ["language:response_language"], [{"language": language}], "de mo ji la")
            for _ in range(30)
        }
        assert len(verdicts) == 1
        (only,) = verdicts
        assert only.strict <= only.loose


def test_an_empty_answer_follows_nothing():
    assert checkers.check("x", ["punctuation:no_comma"], [{}], "   ") == Verdicts((False,), (False,))


def test_unknown_instruction_is_one_line_error():
    with pytest.raises(LoraRlhfError, match="no instruction 'made:up'"):
        checkers.check("x", ["made:up"], [{}], "text")


def test_sentence_counter_is_punkt_english_without_a_pickle():
    # Abbreviations do not end sentences in NLTK's English model: 3 sentences, not 5.
    text = "Dr. Smith met Mr. Jones at 5 p.m. today. They talked. It rained."
    assert len(checkers._sentence_tokenizer().tokenize(text)) == 3
    checkers.registry()
    from if_verifiable.ifeval import instructions_util

    assert instructions_util.count_sentences(text) == 3


def test_four_accuracies_on_a_hand_built_case():
    verdicts = [
        Verdicts((True, False), (True, True)),  # strict: 1 of 2; loose: both
        Verdicts((True,), (True,)),
        Verdicts((False, False, False), (False, True, False)),
    ]
    scores = benchmark.accuracies(verdicts)
    assert scores["prompt_strict"] == pytest.approx(1 / 3)
    assert scores["prompt_loose"] == pytest.approx(2 / 3)
    assert scores["instruction_strict"] == pytest.approx(2 / 6)
    assert scores["instruction_loose"] == pytest.approx(4 / 6)
    assert benchmark.headline(scores) == pytest.approx((1 / 3 + 2 / 6) / 2)


def test_per_instruction_rates():
    prompts = [
        benchmark.IFEvalPrompt(1, "a", ("x:a", "x:b"), ({}, {})),
        benchmark.IFEvalPrompt(2, "b", ("x:a",), ({},)),
    ]
    verdicts = [Verdicts((True, False), (True, True)), Verdicts((False,), (True,))]
    table = benchmark.per_instruction(prompts, verdicts)
    assert table == {"x:a": {"count": 2, "strict": 0.5, "loose": 1.0}, "x:b": {"count": 1, "strict": 0.0, "loose": 1.0}}


def test_intervals_on_a_hand_built_case():
    follow, miss = Verdicts((True,), (True,)), Verdicts((False,), (False,))
    verdicts = {"base": [miss] * 10, "sft": [follow] * 5 + [miss] * 5, "ppo": [follow] * 10}
    ci = intervals(verdicts, [("sft", "base"), ("ppo", "base"), ("ppo", "sft")], samples=500, confidence=0.95, seed=0)
    assert ci["mean"]["base_strict"] == (0.0, 0.0)
    assert ci["mean"]["ppo_loose"] == (1.0, 1.0)
    assert ci["diff"]["ppo_minus_base_strict"] == (1.0, 1.0)
    lo, hi = ci["diff"]["sft_minus_base_loose"]
    assert 0.0 <= lo < 0.5 < hi <= 1.0  # 5 of 10 prompts gained: the interval brackets 0.5
    # Paired: the same verdicts give a zero-width interval at 0 whatever the prompts' spread.
    same = intervals(
        {"sft": verdicts["sft"], "ppo": verdicts["sft"]}, [("ppo", "sft")], samples=200, confidence=0.9, seed=1
    )
    assert same["diff"]["ppo_minus_sft_strict"] == (0.0, 0.0)


def test_summarize_gives_differences_and_tables():
    prompts = [benchmark.IFEvalPrompt(i, "p", ("x:a",), ({},)) for i in range(4)]
    follow, miss = Verdicts((True,), (True,)), Verdicts((False,), (False,))
    section = summarize(
        prompts, {"base": [miss] * 4, "sft": [follow, miss, miss, miss]}, bootstrap_samples=100, confidence=0.95, seed=0
    )
    assert section.accuracy["sft"]["prompt_loose"] == 0.25
    assert section.diff["sft_minus_base_loose"] == 0.25
    assert set(section.diff_ci) == {"sft_minus_base_strict", "sft_minus_base_loose"}


def test_shipped_prompts_are_the_published_541():
    assert benchmark.shipped_data_ok()
    prompts = benchmark.load_prompts()
    assert len(prompts) == 541
    assert sum(len(p.instruction_ids) for p in prompts) == 834
    assert all(i in checkers.registry() for p in prompts for i in p.instruction_ids)


def test_bad_benchmark_rows_are_one_line_errors(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"key": 1, "prompt": "p", "instruction_id_list": ["a"], "kwargs": []}) + "\n")
    with pytest.raises(LoraRlhfError, match="line 1: 1 instruction ids but 0 kwargs"):
        benchmark.load_prompts(path)
    path.write_text('{"key": 1, "prompt": 3, "instruction_id_list": [], "kwargs": []}\n')
    with pytest.raises(LoraRlhfError, match="line 1: 'prompt' must be a str"):
        benchmark.load_prompts(path)


GOOD_IFEVAL_ROW = b'{"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}\n'


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"key": 2, "prompt": "caf\xe9"}', "line 2: byte 25 is not UTF-8"),
        (b'{"key": 2, "prompt": "cut', "line 2: not valid JSON"),
        (b"[" * 200_000 + b"]" * 200_000, "line 2: nests arrays or objects too deeply"),
        (
            b'{"key": 2, "prompt": "hi \\ud800", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}',
            "line 2: 'prompt' holds a lone UTF-16 surrogate",
        ),
    ],
)
def test_an_ifeval_file_that_would_be_a_traceback_is_one_line(tmp_path, line, expected):
    """Issue 29: eval.ifeval.path may name any file; these were UnicodeDecodeError, JSONDecodeError,
    RecursionError and (at generation) the tokenizer's TypeError."""
    path = tmp_path / "bad.jsonl"
    path.write_bytes(GOOD_IFEVAL_ROW + line + b"\n")
    with pytest.raises(LoraRlhfError, match=re.escape(expected)):
        benchmark.load_prompts(path)


def test_word_splitting_is_nltks_own():
    checkers.registry()
    from if_verifiable.ifeval import instructions_util
    from nltk.tokenize import NLTKWordTokenizer

    text = "HELLO there, Dr. SMITH. Don't WORRY."
    expected = [t for s in checkers._sentence_tokenizer().tokenize(text) for t in NLTKWordTokenizer().tokenize(s)]
    assert instructions_util.nltk.word_tokenize(text) == expected
    assert "Do" in expected and "n't" in expected  # NLTK's contraction split, as the checker counts words


def test_answers_written_by_eval_read_back_in_the_prompts_order(tmp_path):
    prompts = benchmark.load_prompts()[:3]
    path = tmp_path / "sft.jsonl"
    write_responses(path, prompts, ["a", "b", "c"])
    assert read_responses(path, list(reversed(prompts))) == ["c", "b", "a"]
    with pytest.raises(LoraRlhfError, match=r"sft\.jsonl: no answer to 1 of the prompts"):
        read_responses(path, benchmark.load_prompts()[:4])
    path.write_bytes(path.read_bytes() + b'{"prompt": "x"}\n')
    with pytest.raises(LoraRlhfError, match=r"line 4: expected \{\"prompt\": <text>, \"response\": <text>\}"):
        read_responses(path, prompts)
    path.write_bytes(b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(LoraRlhfError, match="line 1: byte"):
        read_responses(path, prompts)
