"""Repairs that make a plain answer follow IFEval's verifiable instructions, for written demonstrations.

A demonstration is the base model's own answer to a task stem, repaired by code so that it satisfies each
instruction of the prompt as IFEval's checkers (`lora_rlhf.ifeval.checkers`) test it. Each instruction id has
one small pure function `fn(response, kwargs, prompt) -> response` in `REPAIRS`; each leaves a response that
already passes its checker unchanged. `repair` applies them in an order that keeps earlier ones satisfied:
length and layout first, then content additions, then wrapping, then case changes and comma removal. Limits
that later additions can break ("less than N sentences/words") are retried with a tighter bound.

`language:response_language` has no repair: an English answer already passes "en", and other languages are
not written by code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lora_rlhf.ifeval import checkers

Repair = Callable[[str, Mapping[str, Any], str], str]

# Neutral sentences for padding: no commas, no all-capital words, plain English.
FILLER = (
    "This is worth keeping in mind.",
    "It helps to look at the details one step at a time.",
    "Small changes can add up over time.",
    "Each of these points can be adapted to your own situation.",
    "The right choice often depends on the context.",
    "It is a good idea to start simple and build from there.",
    "Practice makes the whole process easier.",
    "A clear plan makes the next steps much easier.",
    "Keeping notes can help you track what works.",
    "Different people may find different approaches useful.",
    "There is no single answer that fits every case.",
    "Asking for feedback can reveal things you might miss.",
    "Patience usually pays off in the long run.",
    "Checking your progress now and then keeps things on track.",
    "Good habits are easier to keep than to start.",
    "The basics matter more than the details at first.",
    "Taking breaks can help you think more clearly.",
    "Simple tools are often the most reliable.",
    "It is fine to adjust the plan as you learn more.",
    "Sharing what you learn can help others too.",
    "Consistency tends to matter more than intensity.",
    "Clear goals make it easier to measure success.",
    "Reflecting on mistakes is a useful way to improve.",
    "Most progress comes from steady effort.",
)
# Words rich in each letter, for "the letter x at least N times".
LETTER_WORDS = dict(
    zip(
        "abcdefghijklmnopqrstuvwxyz",
        [
            words.split()
            for words in (
                "banana avocado alpaca|bubble baseball blueberry|circle cactus concert|added dreamed divided|"
                "excellence evergreen eleven|effort fluffy fifteen|giggling gigantic baggage|health highway hitchhike|"
                "initial invisible infinite|jigsaw jazz jump|knack kayak kick|lively lollipop parallel|"
                "momentum mammal minimum|nonstop nineteen announcement|tomorrow cookbook motorboat|"
                "paper puppet pineapple|quiet quick quest|error mirror referral|success stress sunset|"
                "attempt tomato totally|unusual ukulele uptown|vivid valve velvet|window willow workflow|"
                "extra index toolbox|yearly yummy yesterday|zigzag puzzle pizza"
            ).split("|")
        ],
    )
)
_STOPWORDS = set(
    "a an the and or of to in on for with about how what why when which who is are be do does can could would "
    "should your you my me i it its this that these those as at by from into write explain describe give tell "
    "list share discuss suggest provide summarize compare create draft compose make please some few short brief "
    "simple answer question".split()
)
_CAPITAL_CLOSERS = (
    "THE TRUTH IS THAT THIS TAKES TIME.",
    "THAT IS THE THING TO THINK ABOUT.",
    "THIS IS THE BEST WAY TO START.",
)
_MARKER_LINE = re.compile(r"^\s*([*\-+#>]|\d+[.)]|<<|section\s?\d)", re.IGNORECASE)
_ALL_CAPS = re.compile(r"\b[A-Z][A-Z.]*\b")


def _check(instruction_id: str, kwargs: Mapping[str, Any], prompt: str, text: str) -> bool:
    """Whether `text` follows one instruction strictly (IFEval's checker)."""
    return bool(text.strip()) and bool(checkers.checker(instruction_id, kwargs, prompt).check_following(text))


def _spans(text: str) -> list[tuple[int, int]]:
    """Sentence spans as IFEval counts sentences (NLTK Punkt, English)."""
    checkers.registry()
    from if_verifiable.ifeval import instructions_util

    return list(instructions_util._get_sentence_tokenizer().span_tokenize(text))


def _count_words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def _complete(text: str) -> str:
    """The text without a trailing cut-off sentence (or with a full stop when nothing complete is left)."""
    text = text.rstrip()
    last = text.rsplit("\n", 1)[-1]
    if not text or re.search(r"[.!?:\"')\]*>]$", text) or _MARKER_LINE.match(last):
        return text
    cut = max(text.rfind(". "), text.rfind("! "), text.rfind("? "), text.rfind(".\n"))
    return text[: cut + 1] if cut > len(text) - len(last) else text + "."


def _cut(text: str, end: int) -> str:
    """The text up to `end`, without a list marker left bare at its end."""
    return re.sub(r"\n\s*(\d+[.)]|[*\-+])\s*$", "", text[:end].rstrip())


def _append(text: str, sentence: str) -> str:
    """`sentence` added after the text's last complete sentence, in the same paragraph."""
    text = _complete(text)
    if not text:
        return sentence
    return text + ("\n" if _MARKER_LINE.match(text.rsplit("\n", 1)[-1]) else " ") + sentence


def _pad(text: str, enough: Callable[[str], bool]) -> str:
    """Neutral sentences appended (those not yet in the text first) until `enough(text)`."""
    for index in range(200):
        if enough(text):
            break
        unused = [s for s in FILLER if s not in text]
        text = _append(text, unused[0] if unused else FILLER[index % len(FILLER)])
    return text


def _drop(text: str, pattern: str, done: Callable[[str], bool]) -> str:
    """Sentences matching `pattern` removed from the end until `done(text)`; inside a line break, the words."""
    spans = _spans(text)
    for start, end in reversed(spans):
        if done(text):
            break
        piece = text[start:end]
        if not re.search(pattern, piece, flags=re.IGNORECASE):
            continue
        if "\n" in piece.strip() or len(spans) == 1 or _MARKER_LINE.match(piece):
            piece = re.sub(r"\s*\w*(" + pattern + r")\w*", "", piece, flags=re.IGNORECASE)
        else:
            piece = ""
        text = text[:start] + piece + text[end:]
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def _topic(prompt: str, response: str) -> str:
    """A few content words of the prompt's first sentence (or the response's), title-cased."""
    for source in (prompt, response):
        first = re.split(r"[.?!:\n]", source.strip(), maxsplit=1)[0]
        words = [w for w in re.findall(r"[A-Za-z][A-Za-z'-]*", first) if w.lower() not in _STOPWORDS]
        if words:
            return " ".join(w if w.isupper() else w.capitalize() for w in words[:4])
    return "My Answer"


def _blocks(text: str) -> list[str]:
    """Paragraphs split at blank lines, without divider lines."""
    text = re.sub(r"^\s*(\*{3,}|-{3,}|_{3,})\s*$", "", text, flags=re.MULTILINE)
    return [b.strip() for b in re.split(r"\n\s*\n", text) if b.strip()]


def _split_block(block: str) -> tuple[str, str] | None:
    """The block cut in two at its middle sentence or line boundary, or None when it is one sentence."""
    cuts = sorted({s for s, _ in _spans(block)} | {m.end() for m in re.finditer(r"\n", block)} - {0})
    cuts = [c for c in cuts if block[:c].strip() and block[c:].strip()]
    if not cuts:
        return None
    cut = cuts[len(cuts) // 2]
    return block[:cut].strip(), block[cut:].strip()


def _regroup(text: str, count: int, joiner: str) -> list[str]:
    """Exactly `count` non-empty chunks: paragraphs merged (by `joiner`) or split at sentences, padded if short."""
    blocks = _blocks(_complete(text)) or [FILLER[0]]
    while len(blocks) > count:
        sizes = [len(a) + len(b) for a, b in zip(blocks, blocks[1:])]
        i = sizes.index(min(sizes))
        blocks[i : i + 2] = [blocks[i] + joiner + blocks[i + 1]]
    while len(blocks) < count:
        order = sorted(range(len(blocks)), key=lambda i: -len(blocks[i]))
        split = next(((i, parts) for i in order if (parts := _split_block(blocks[i]))), None)
        if split is None:
            blocks.append(next((s for s in FILLER if s not in "\n".join(blocks)), FILLER[len(blocks) % len(FILLER)]))
        else:
            blocks[split[0] : split[0] + 1] = list(split[1])
    return blocks


def _less_or_at_least(kwargs: Mapping[str, Any], key: str, count_key: str, value: int) -> bool:
    return value < kwargs[count_key] if kwargs[key] == "less than" else value >= kwargs[count_key]


# --- length and layout --------------------------------------------------------------------------------------


def fix_number_sentences(text: str, kwargs: Mapping[str, Any], prompt: str) -> str:
    """Fewer sentences: cut after the last allowed one. More: neutral sentences appended."""
    limit = kwargs["num_sentences"]
    if kwargs["relation"] == "less than":
        spans = _spans(text)
        return _cut(text, spans[max(limit - 1, 1) - 1][1]) if len(spans) >= limit else text
    return _pad(text, lambda t: len(_spans(t)) >= limit)


def fix_number_words(text: str, kwargs: Mapping[str, Any], prompt: str) -> str:
    """Fewer words: cut at the last sentence boundary under the limit (inside the first sentence if need be)."""
    limit = kwargs["num_words"]
    if kwargs["relation"] != "less than":
        return _pad(text, lambda t: _count_words(t) >= limit)
    if _count_words(text) < limit:
        return text
    ends = [end for _, end in _spans(text) if _count_words(text[:end]) < limit]
    if ends:
        return _cut(text, ends[-1])
    words = list(re.finditer(r"\w+", text))
    return text[: words[max(limit - 2, 0)].end()] + "."


def fix_bullets(text: str, kwargs: Mapping[str, Any], prompt: str) -> str:
    """An opening sentence, then exactly N bullets made from the text's own sentences or list items, then the rest."""
    items = []
    for line in _complete(text).splitlines():
        line = re.sub(r"^\s*([*\-+]|\d+[.)]|#+)\s*", "", line).strip()
        line += "." if line and line[-1].isalnum() else ""
        items += [line[s:e] for s, e in _spans(line)] if line else []
    count = kwargs["num_bullets"]
    items = items or [FILLER[0]]
    intro, body = (items[0], items[1:]) if len(items) > count else ("", items)
    body += [s for s in FILLER if s not in body][: max(0, count - len(body))]
    bullets = "\n".join("* " + item for item in body[:count])
    rest = " ".join(body[count:])
    return "\n\n".join(part for part in (intro, bullets, rest) if part)


def fix_sections(text: str, kwargs: Mapping[str, Any], prompt: str) -> str:
    """N sections, each headed by "<spliter> k" on its own line."""
    chunks = _regroup(text, kwargs["num_sections"], "\n\n")
    return "\n\n".join(f"{kwargs['section_spliter']} {i}\n{chunk}" for i, chunk in enumerate(chunks, 1))


def fix_paragraphs(text: str, kwargs: Mapping[str, Any], prompt: str) -> str:
    """Exactly N paragraphs separated by the markdown divider ***."""
    return "\n\n***\n\n".join(_regroup(text, kwargs["num_paragraphs"], "\n\n"))


def fix_nth_paragraph(text: str, kwargs: Mapping[str, Any], prompt: str) -> str:
    """Exactly N blank-line paragraphs, the nth opening with a short sentence that starts with the word."""
    chunks = _regroup(text, kwargs["num_paragraphs"], "\n")
    nth, word = kwargs["nth_paragraph"], kwargs["first_word"]
    if nth <= len(chunks) and not re.match(re.escape(word) + r"\b", chunks[nth - 1], flags=re.IGNORECASE):
        chunk = chunks[nth - 1]
        joiner = "\n" if _MARKER_LINE.match(chunk) else " "
        chunks[nth - 1] = f"{word.capitalize()} is worth considering here.{joiner}{chunk}"
    return "\n\n".join(chunks)


def fix_highlights(text: str, kwargs: Mapping[str, Any], prompt: str) -> str:
    """N words inside sentences (never at a line start) emphasised as *word*."""
    count = kwargs["num_highlights"]
    pattern = r"(?<=[a-z] )[a-z]{5,}\b(?![*])"
    text = _pad(text, lambda t: len(set(re.findall(pattern, t))) >= count)
    chosen, seen = [], set()
    for match in re.finditer(pattern, text):
        if match.group() not in seen:
            seen.add(match.group())
            chosen.append(match)
    step = max(1, len(chosen) // count)
    for match in reversed(chosen[::step][:count]):
        text = text[: match.start()] + f"*{match.group()}*" + text[match.end() :]
    return text


# --- content ------------------------------------------------------------------------------------------------


def fix_forbidden_words(text: str, kwargs: Mapping[str, Any], prompt: str) -> str:
    """Sentences with a forbidden word dropped (the word alone inside list items and headings)."""
    pattern = "|".join(r"\b" + re.escape(w) + r"\b" for w in kwargs["forbidden_words"])
    return _drop(text, pattern, lambda t: not re.search(pattern, t, flags=re.IGNORECASE))


def fix_keywords(text: str, kwargs: Mapping[str, Any], prompt: str) -> str:
    """Missing keywords woven into one added sentence."""
    missing = [w for w in kwargs["keywords"] if not re.search(w, text, flags=re.IGNORECASE)]
    return _append(text, f"It also helps to keep {' and '.join(missing)} in mind.") if missing else text


def fix_keyword_frequency(text: str, kwargs: Mapping[str, Any], prompt: str) -> str:
    """Too few: one added sentence that repeats the keyword. Too many: sentences with it dropped from the end."""
    keyword, frequency = kwargs["keyword"], kwargs["frequency"]
    found = len(re.findall(keyword, text, flags=re.IGNORECASE))
    if kwargs["relation"] == "less than":
        return _drop(text, re.escape(keyword), lambda t: len(re.findall(keyword, t, flags=re.IGNORECASE)) < frequency)
    parts = ["{k} matters here", "{k} is worth keeping in mind", "{k} deserves attention too"]
    sentence = " and ".join(parts[i % 3] for i in range(frequency - found)).format(k=keyword)
    return _append(text, sentence[0].upper() + sentence[1:] + ".")


def fix_letter_frequency(text: str, kwargs: Mapping[str, Any], prompt: str) -> str:
    """Too few: a sentence of words rich in the letter. Too many: trailing sentences dropped (at least one kept)."""
    letter, frequency = kwargs["letter"].lower(), kwargs["let_frequency"]
    if kwargs["let_relation"] == "less than":
        spans = _spans(text)
        ends = [end for _, end in spans if text[:end].lower().count(letter) < frequency]
        return _cut(text, ends[-1]) if ends else text
    text, words, chosen = _complete(text), LETTER_WORDS[letter], []
    while text.lower().count(letter) + sum(w.count(letter) for w in chosen) < frequency:
        chosen.append(words[len(chosen) % len(words)])
    return _append(text, f"A few words that come to mind are {' and '.join(chosen)}.")


def fix_placeholders(text: str, kwargs: Mapping[str, Any], prompt: str) -> str:
    """A sentence inviting the reader to fill in the missing number of [placeholders]."""
    names = ["name", "date", "location", "contact details", "goal", "budget", "deadline", "audience"]
    missing = kwargs["num_placeholders"] - len(re.findall(r"\[.*?\]", text))
    fields = " and ".join(f"[{names[i % len(names)]}]" for i in range(missing))
    return _append(text, f"You can adapt this by filling in {fields}.")


def fix_postscript(text: str, kwargs: Mapping[str, Any], prompt: str) -> str:
    """A postscript line at the end, starting with the marker."""
    marker = kwargs["postscript_marker"].strip()
    marker += "." if re.fullmatch(r"(P\.)+S", marker, flags=re.IGNORECASE) else ""
    return _complete(text) + f"\n{marker} Let me know if you would like more detail on any part."


def fix_title(text: str, kwargs: Mapping[str, Any], prompt: str) -> str:
    """A title line <<...>> made from the prompt's topic words."""
    return f"<<{_topic(prompt, text)}>>\n{text.lstrip()}"


def fix_end_phrase(text: str, kwargs: Mapping[str, Any], prompt: str) -> str:
    """The end phrase as the answer's last line (after the last complete sentence)."""
    return _complete(text) + "\n" + kwargs["end_phrase"].strip()


def fix_constrained_response(text: str, kwargs: Mapping[str, Any], prompt: str) -> str:
    """One of the allowed verdicts first (yes/no when the answer opens with it, else maybe)."""
    first = (re.findall(r"[a-z]+", text.lower()) or ["maybe"])[0]
    verdict = first if first in ("yes", "no") else "maybe"
    return f"My answer is {verdict}.\n\n{text.lstrip()}"


# --- wrapping -----------------------------------------------------------------------------------------------


def fix_two_responses(text: str, kwargs: Mapping[str, Any], prompt: str) -> str:
    """The answer, six asterisks, then a shorter second answer made from its opening sentences."""
    prose = " ".join(
        line.replace("*", "").strip()
        for line in text.splitlines()
        if line.strip() and not _MARKER_LINE.match(line) and not line.rstrip().endswith(":")
    )
    short = " ".join(prose[s:e] for s, e in _spans(prose)[:2])
    return f"{text.strip()}\n******\nIn short: {short or FILLER[0]}"


def fix_repeat_prompt(text: str, kwargs: Mapping[str, Any], prompt: str) -> str:
    """The request repeated word for word, then the answer."""
    return f"{kwargs['prompt_to_repeat'].strip()}\n\n{text.lstrip()}"


def fix_json(text: str, kwargs: Mapping[str, Any], prompt: str) -> str:
    """The answer as a JSON object {"answer": ...} in a json code block."""
    return "```json\n" + json.dumps({"answer": text.strip()}, ensure_ascii=False, indent=2) + "\n```"


def fix_quotation(text: str, kwargs: Mapping[str, Any], prompt: str) -> str:
    """The whole answer in double quotation marks (the opening one on its own line before a list or heading)."""
    text = text.strip()
    return '"' + ("\n" if _MARKER_LINE.match(text) else "") + text + '"'


# --- case and punctuation -----------------------------------------------------------------------------------


def fix_capital_words(text: str, kwargs: Mapping[str, Any], prompt: str) -> str:
    """Too few all-capital words: words spread over the text put in capitals. Too many: capitals undone from the end."""
    import nltk

    def count(t: str) -> int:
        return sum(word.isupper() for word in nltk.word_tokenize(t, preserve_line=True))

    frequency = kwargs["capital_frequency"]
    if kwargs["capital_relation"] == "less than":
        for match in reversed(list(_ALL_CAPS.finditer(text))):
            if count(text) < frequency:
                break
            word = match.group()
            text = text[: match.start()] + (word.capitalize() if len(word) > 1 else word.lower()) + text[match.end() :]
        return text
    word = r"(?<![\w'-])[a-z]{4,}(?![\w'-])"
    text = _pad(text, lambda t: len(re.findall(word, t)) >= frequency)
    while (needed := frequency - count(text)) > 0:
        found = list(re.finditer(word, text))
        if not found:  # nothing left to capitalise (the checker then refuses the demonstration): no endless loop
            break
        for match in reversed(found[:: max(1, len(found) // needed)][:needed]):
            text = text[: match.start()] + match.group().upper() + text[match.end() :]
    return text


def _english_probability(text: str) -> float:
    """langdetect's probability (seeded) that `text` is English; capitals carry little evidence for it."""
    from langdetect.lang_detect_exception import LangDetectException

    try:
        return next(
            (lang.prob for lang in checkers.seeded_detector(text).get_probabilities() if lang.lang == "en"), 0.0
        )
    except LangDetectException:
        return 1.0


def fix_capital(text: str, kwargs: Mapping[str, Any], prompt: str) -> str:
    """All capital letters, plus a sentence or two of plain English after the first when the language is unclear."""
    text = text.upper()
    for sentence in _CAPITAL_CLOSERS:
        if _english_probability(text) >= 0.95:
            break
        cut = min(_spans(text)[0][1], len(text.rstrip().rstrip('"')))
        text = text[:cut] + " " + sentence + text[cut:]
    return text


def fix_lowercase(text: str, kwargs: Mapping[str, Any], prompt: str) -> str:
    """All lowercase letters."""
    return text.lower()


def fix_no_comma(text: str, kwargs: Mapping[str, Any], prompt: str) -> str:
    """Commas removed: digit groups joined (1,000 -> 1000), other commas dropped."""
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)
    return re.sub(r"[ \t]*,[ \t]*", " ", text).replace(" \n", "\n")


# Application order: length and layout, content, wrapping, case and commas. forbidden_words runs twice: first on
# the answer itself, then again after the additions.
REPAIRS: dict[str, Repair] = {
    "keywords:forbidden_words": fix_forbidden_words,
    "length_constraints:number_sentences": fix_number_sentences,
    "length_constraints:number_words": fix_number_words,
    "detectable_format:number_bullet_lists": fix_bullets,
    "detectable_format:multiple_sections": fix_sections,
    "length_constraints:number_paragraphs": fix_paragraphs,
    "length_constraints:nth_paragraph_first_word": fix_nth_paragraph,
    "detectable_format:number_highlighted_sections": fix_highlights,
    "keywords:existence": fix_keywords,
    "keywords:frequency": fix_keyword_frequency,
    "keywords:letter_frequency": fix_letter_frequency,
    "detectable_content:number_placeholders": fix_placeholders,
    "detectable_content:postscript": fix_postscript,
    "detectable_format:title": fix_title,
    "startend:end_checker": fix_end_phrase,
    "detectable_format:constrained_response": fix_constrained_response,
    "combination:two_responses": fix_two_responses,
    "combination:repeat_prompt": fix_repeat_prompt,
    "detectable_format:json_format": fix_json,
    "startend:quotation": fix_quotation,
    "change_case:capital_word_frequency": fix_capital_words,
    "change_case:english_capital": fix_capital,
    "change_case:english_lowercase": fix_lowercase,
    "punctuation:no_comma": fix_no_comma,
}
_ORDER = list(REPAIRS)
_ORDER.insert(_ORDER.index("combination:two_responses"), "keywords:forbidden_words")


def repairable(instruction_id: str) -> bool:
    """Whether `repair` has a repair for this instruction id."""
    return instruction_id in REPAIRS


def _tightened(instruction_id: str, kwargs: Mapping[str, Any], slack: int) -> Mapping[str, Any]:
    """Length limits moved `slack` steps inward, so that later additions stay within the real limit."""
    key, step = {
        "length_constraints:number_sentences": ("num_sentences", 1),
        "length_constraints:number_words": ("num_words", 6),
    }.get(instruction_id, (None, 0))
    if key is None or not slack:
        return kwargs
    sign = -1 if kwargs.get("relation") == "less than" else 1
    return {**kwargs, key: max(2, kwargs[key] + sign * step * slack)}


def _apply(response: str, pairs: Sequence[tuple[str, Mapping[str, Any]]], prompt: str, slack: int) -> str:
    text = response
    for instruction_id in _ORDER:
        for pair_id, args in pairs:
            if pair_id == instruction_id:
                args = _tightened(pair_id, args, slack)
                if not _check(pair_id, args, prompt, text):
                    text = REPAIRS[pair_id](text, args, prompt)
    return text


def repair(response: str, instruction_ids: Sequence[str], kwargs: Sequence[Mapping[str, Any]], prompt: str) -> str:
    """Apply the repairs of all instructions in an order that keeps earlier ones satisfied (structure/length first;
    then content additions like keywords, placeholders, postscript, title, end phrase; then wrapping: two_responses,
    repeat_prompt, json, quotation; then case changes and comma removal last), returning the repaired text.
    Instructions without a repair are left alone.

    Length limits are retried with a tighter bound when later additions push the answer past them; when no try
    satisfies everything, the try that satisfies the most instructions is returned.
    """
    pairs = [(i, {k: v for k, v in (a or {}).items() if v is not None}) for i, a in zip(instruction_ids, kwargs)]
    pairs = [(i, a) for i, a in pairs if repairable(i)]
    if all(_check(i, a, prompt, response) for i, a in pairs):
        return response
    best, best_score = response, -1
    for slack in range(6):
        text = _apply(_complete(response), pairs, prompt, slack)
        score = sum(_check(i, a, prompt, text) for i, a in pairs)
        if score > best_score:
            best, best_score = text, score
        if score == len(pairs):
            break
    return best
