"""Repairs of base answers so that they follow IFEval instructions (lora_rlhf.ifeval.repair), checked by IFEval's
own checkers on realistic base answers and random argument draws. Fast: no model."""

from __future__ import annotations

import random
import re
import zlib

import pytest

pytest.importorskip("if_verifiable")

from lora_rlhf.ifeval import checkers, repair  # noqa: E402

STEM = "Explain how regular exercise improves sleep quality for office workers."

TEXTS = {
    "prose": (
        "Regular exercise improves sleep in several ways. First, physical activity raises your body temperature, "
        "and the drop afterwards signals to your brain that it is time to rest. Second, exercise reduces stress "
        "and anxiety, which are common causes of insomnia.\n\n"
        "For office workers, who often sit for eight hours a day, even a short walk at lunch can make a "
        "difference. Studies from the National Sleep Foundation suggest that 150 minutes of moderate activity per "
        "week can improve sleep quality by up to 65%.\n\n"
        "However, timing matters. Vigorous workouts late in the evening may keep some people awake, so it is best "
        "to finish intense exercise at least two hours before bed."
    ),
    "short": (
        "Exercise helps you fall asleep faster and sleep more deeply, especially if you are active during the day."
    ),
    "list": (
        "Here are some ways exercise helps office workers sleep better:\n\n"
        "1. **Reduces stress**: Physical activity lowers cortisol levels.\n"
        "2. **Regulates your body clock**: Morning walks expose you to daylight.\n"
        "3. **Tires the body**: Muscles need rest and repair, which deepens sleep.\n\n"
        "- Try stretching at your desk\n"
        "- Take the stairs instead of the elevator\n\n"
        "Overall, a consistent routine is the key."
    ),
    "cut": (
        "Exercise is one of the most effective ways to sleep better. When you move during the day, your body "
        "builds up a stronger need for sleep, and your mood improves too. Office workers, in particular, benefit "
        "from breaking up long periods of sitting with short activity breaks, because"
    ),
}


@pytest.fixture(scope="module", autouse=True)
def _offline_checkers():
    """Deterministic language detection, and NLTK's word_tokenize (capital_word_frequency's checker) given the
    pickle-free Punkt model instead of the downloaded punkt_tab it would look for."""
    import langdetect
    import nltk.tokenize

    tokenizer = checkers._sentence_tokenizer()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(langdetect.DetectorFactory, "seed", 0)
        patch.setattr(nltk.tokenize, "_get_punkt_tokenizer", lambda language="english": tokenizer)
        yield


def draw(instruction_id: str) -> dict:
    """Random valid arguments, as IFEval's build_description draws them."""
    if instruction_id == "combination:repeat_prompt":
        return {"prompt_to_repeat": STEM}
    instance = checkers.registry()[instruction_id](instruction_id)
    instance.build_description()
    return dict(instance.get_instruction_args() or {})


def feasible(instruction_id: str, args: dict, text: str) -> bool:
    """False for draws that no answer (or no repair that keeps a sentence) can follow."""
    if instruction_id == "length_constraints:number_sentences":
        return not (args["relation"] == "less than" and args["num_sentences"] < 2)
    if instruction_id == "length_constraints:nth_paragraph_first_word":
        return args["nth_paragraph"] <= args["num_paragraphs"]
    if instruction_id == "keywords:letter_frequency" and args["let_relation"] == "less than":
        start, end = repair._spans(text)[0]
        return text[start:end].lower().count(args["letter"]) < args["let_frequency"]
    return True


def prompt_for(ids, args) -> str:
    parts = [STEM]
    for instruction_id, kwargs in zip(ids, args):
        instance = checkers.registry()[instruction_id](instruction_id)
        parts.append(instance.build_description(**kwargs) if kwargs else instance.build_description())
    return " ".join(parts)


@pytest.mark.parametrize("instruction_id", sorted(repair.REPAIRS))
def test_each_repair_makes_the_checker_pass(instruction_id):
    random.seed(zlib.crc32(instruction_id.encode()))
    failed_before = checked = 0
    for name, text in TEXTS.items():
        for index in range(4):
            args = draw(instruction_id)
            if instruction_id == "keywords:forbidden_words" and index % 2:  # random words rarely occur in a text
                args = {
                    "forbidden_words": sorted(
                        {args["forbidden_words"][0], random.choice(re.findall(r"[a-z]{4,}", text))}
                    )
                }
            if not feasible(instruction_id, args, text):
                continue
            prompt = prompt_for([instruction_id], [args])
            fixed = repair.repair(text, [instruction_id], [args], prompt)
            assert checkers.check(prompt, [instruction_id], [args], fixed).strict == (True,), (name, args, fixed)
            failed_before += not checkers.check(prompt, [instruction_id], [args], text).strict[0]
            checked += 1
    assert checked >= 8
    assert failed_before > 0, "the base texts already pass every draw: the test could not fail"


def test_random_combinations_mostly_pass():
    # Measured: 0.97 of 300 combinations. What fails is a real conflict or a tight limit: lowercase or
    # capital_word_frequency next to "Section"/"SECTION" headers, no_comma with a comma in the end phrase or
    # repeated prompt, "less than N" sentences/words/letters with N too small for the added title, postscript or
    # keyword sentence, and a title line before a first paragraph that must start with a given word.
    rng = random.Random(0)
    random.seed(0)
    ids = sorted(repair.REPAIRS)
    table = checkers.conflicts()
    passed = total = 0
    failures = []
    while total < 300:
        chosen: list[str] = []
        for _ in range(rng.randint(1, 3)):
            options = [i for i in ids if i not in chosen and not any(i in table.get(c, ()) for c in chosen)]
            if options:
                chosen.append(rng.choice(options))
        text = rng.choice(list(TEXTS.values()))
        args = [draw(i) for i in chosen]
        if not all(feasible(i, a, text) for i, a in zip(chosen, args)):
            continue
        prompt = prompt_for(chosen, args)
        verdicts = checkers.check(prompt, chosen, args, repair.repair(text, chosen, args, prompt)).strict
        total += 1
        passed += all(verdicts)
        if not all(verdicts):
            failures.append([(i, a) for i, a, ok in zip(chosen, args, verdicts) if not ok])
    rate = passed / total
    print(f"combinations passing: {rate:.3f}; failing: {failures}")
    assert rate >= 0.9, failures


def test_unchanged_without_repair_or_when_passing():
    text = TEXTS["prose"]
    prompt = STEM + " Your ENTIRE response should be in English language, no other language is allowed."
    assert not repair.repairable("language:response_language")
    assert repair.repair(text, ["language:response_language"], [{"language": "en"}], prompt) == text
    no_commas = "Exercise helps you sleep. Walk every day."
    assert repair.repair(no_commas, ["punctuation:no_comma"], [{}], STEM) == no_commas
    lower = "exercise helps you sleep better."
    assert repair.repair(lower, ["change_case:english_lowercase"], [{}], STEM) == lower
    keyword = [{"keywords": ["sleep", "exercise"]}]
    assert repair.repair(text, ["keywords:existence"], keyword, STEM) == text


def test_repairs_read_naturally():
    text = TEXTS["prose"]
    titled = repair.repair(text, ["detectable_format:title"], [{}], STEM)
    assert titled.startswith("<<Regular Exercise Improves Sleep>>\n")
    bullets = repair.repair(text, ["detectable_format:number_bullet_lists"], [{"num_bullets": 3}], STEM)
    assert bullets.count("\n* ") == 3 and "Regular exercise improves sleep" in bullets
    paragraphs = repair.repair(TEXTS["short"], ["length_constraints:number_paragraphs"], [{"num_paragraphs": 2}], STEM)
    assert paragraphs.count("\n\n***\n\n") == 1
    no_comma = repair.repair("It costs 1,000 dollars, or more.", ["punctuation:no_comma"], [{}], STEM)
    assert no_comma == "It costs 1000 dollars or more."


def test_capital_words_stop_when_nothing_is_left_to_capitalise():
    """A text with no lowercase word of 4+ letters left looped for ever (the tiny model's demonstrations hung)."""
    from lora_rlhf.ifeval.repair import fix_capital_words

    kwargs = {"capital_relation": "at least", "capital_frequency": 1000}
    text = fix_capital_words("AAAA BBBB ok. x y z.", kwargs, "prompt")
    assert text.startswith("AAAA BBBB") and not re.search(r"(?<![\w'-])[a-z]{4,}(?![\w'-])", text)  # all done


def test_an_answer_cut_by_the_budget_ends_at_its_last_full_sentence():
    from lora_rlhf.pipeline.ifeval_data import whole_sentences

    assert whole_sentences('One. Two three! Four "five." six seven') == 'One. Two three! Four "five."'
    assert whole_sentences("Is it? Yes (it is.) and then") == "Is it? Yes (it is.)"
    assert whole_sentences("no sentence ends here") == ""
    assert whole_sentences("version 2.5 is out") == ""  # a decimal point is not a sentence's end


def test_an_answer_that_repeats_itself_is_found():
    from lora_rlhf.pipeline.ifeval_data import rambles

    assert rambles("The internet changed us.\nIt is fast.\nThe internet changed us.")
    assert rambles("it was good and it was good and it was good and it was good and it was good")
    assert not rambles("Tides rise and fall twice a day because the moon pulls on the oceans of the earth.")
