"""General English text for the demo, standing in for the paper's pretraining data (PPO-ptx) and for the
held-out text on which eval measures the alignment tax (InstructGPT §4.2: RLHF should not cost language
modelling on data it was not aligned on).

The demo has no Hub access, so the text comes from the documentation Python ships with: the docstrings of
standard-library modules and their public functions and classes, cut into paragraphs. None of it resembles
the demo's instruction tasks, and the two uses draw disjoint paragraphs (by a hash of the text).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from typing import Literal

TextUse = Literal["ptx", "heldout"]
# Modules whose documentation is plain prose about everyday programming, present in every CPython.
MODULES = (
    "argparse",
    "bisect",
    "calendar",
    "collections",
    "csv",
    "datetime",
    "decimal",
    "difflib",
    "fractions",
    "functools",
    "heapq",
    "itertools",
    "json",
    "logging",
    "pathlib",
    "queue",
    "random",
    "shutil",
    "statistics",
    "string",
    "tempfile",
    "textwrap",
    "threading",
    "unittest",
    "zipfile",
)
_MIN_CHARS, _MAX_CHARS = 160, 700


def paragraphs() -> list[str]:
    """Every docstring paragraph of MODULES between _MIN_CHARS and _MAX_CHARS long, prose only, in a fixed order."""
    seen: dict[str, None] = {}
    for name in MODULES:
        module = importlib.import_module(name)
        docs = [inspect.getdoc(module)] + [
            inspect.getdoc(obj)
            for attr, obj in sorted(vars(module).items())
            if not attr.startswith("_")
            and (inspect.isfunction(obj) or inspect.isclass(obj))
            and getattr(obj, "__module__", None) == name
        ]
        for doc in docs:
            for block in (doc or "").split("\n\n"):
                text = " ".join(block.split())
                if _MIN_CHARS <= len(text) <= _MAX_CHARS and _is_prose(text):
                    seen.setdefault(text, None)
    return list(seen)


def text_rows(use: TextUse, n: int) -> list[dict[str, str]]:
    """Up to `n` {"text"} rows for `use`; "ptx" and "heldout" never share a paragraph."""
    chosen = [p for p in paragraphs() if _use_of(p) == use]
    return [{"text": p} for p in chosen[:n]]


def _use_of(text: str) -> TextUse:
    return "heldout" if hashlib.sha256(text.encode()).digest()[0] % 2 else "ptx"


def _is_prose(text: str) -> bool:
    """Sentences, not code samples or tables: mostly letters and spaces, ends like a sentence."""
    letters = sum(c.isalpha() or c.isspace() for c in text)
    return letters / len(text) > 0.85 and text.rstrip()[-1] in ".:" and ">>>" not in text
