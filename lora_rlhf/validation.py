"""Checks the config dataclasses share, each rule written once (issue 26); imports nothing of ours but errors."""

from __future__ import annotations

from collections.abc import Iterable

from lora_rlhf.errors import LoraRlhfError


def check_positive_ints(config: object, keys: Iterable[str], *, nullable: bool = False) -> None:
    """Raise "key: value must be a positive integer" for the first of `config`'s `keys` that is not an int >= 1.

    With `nullable`, None passes too and the message ends "must be a positive integer or null".
    """
    for key in keys:
        value = getattr(config, key)
        if nullable and value is None:
            continue
        if not isinstance(value, int) or value < 1:
            raise LoraRlhfError(f"{key}: {value!r} must be a positive integer{' or null' if nullable else ''}")


def check_unicode(text: str, where: str) -> None:
    """Raise a one-line error if `text` holds a lone UTF-16 surrogate, which no tokenizer can encode (issue 29).

    Python makes one from a JSON escape ("\\ud800") or, on the command line, from a byte that is not UTF-8
    (decoded with surrogateescape); the tokenizer would raise a TypeError deep inside its Rust binding.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LoraRlhfError(
            f"{where} holds a lone UTF-16 surrogate at character {exc.start} (a byte that is not UTF-8, or an "
            "escape like \\ud800), which is not valid Unicode text"
        ) from None
