"""`lora-rlhf generate`: one base, any number of adapters by name; answer prompts with one, or --compare several."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap
from pathlib import Path

from lora_rlhf.cli.inference_args import add_model_arguments, load_registry
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.validation import check_unicode

DESCRIPTION = (
    "Load the base once, attach adapters by name (folders, Hub ids, a run's roles) and generate with one of them, "
    "the bare base ('base'), or several side by side (--compare). Prompts go through the chat template."
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="generate with adapters (hot-swapped on one base)", description=DESCRIPTION
    )
    add_model_arguments(parser)
    what = parser.add_argument_group("prompts")
    what.add_argument("--prompt", "-p", action="append", default=[], help="a prompt (repeatable)")
    what.add_argument("--prompts-file", metavar="FILE", help="one prompt per line ('-' = stdin)")
    what.add_argument("--system", help="a system message put before every prompt")
    what.add_argument("--no-chat-template", action="store_true", help="send prompts as raw text")
    who = parser.add_argument_group("adapters to run")
    who.add_argument(
        "--model",
        "-m",
        action="append",
        default=[],
        metavar="NAME",
        help="adapter name or 'base' (default: policy if attached, else the last attached adapter, else base)",
    )
    who.add_argument(
        "--compare", action="store_true", help="answer with every --model (default: base and all adapters) side by side"
    )
    who.add_argument("--json", action="store_true", help="print JSON lines {prompt, model, response}")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--max-new-tokens", type=int, default=128)
    sampling.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    sampling.add_argument("--top-p", type=float, default=1.0)
    sampling.add_argument("--top-k", type=int, default=0)
    sampling.add_argument("--repetition-penalty", type=float, default=1.0)
    sampling.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    sampling.add_argument("--seed", type=int)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lora_rlhf.errors import LoraRlhfError
    from lora_rlhf.inference import GenerationOptions

    prompts = _prompts(args)
    if not prompts:
        raise LoraRlhfError("no prompts: give --prompt TEXT or --prompts-file FILE")
    options = GenerationOptions(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        stop=args.stop,
        seed=args.seed,
    )
    registry = load_registry(args)
    names = _models(args, registry.names)
    for name in names:
        registry.require(name)
    _check_budget(registry, prompts, args)
    answers = registry.compare(names, prompts, options, chat=not args.no_chat_template, system=args.system)
    if args.json:
        for i, prompt in enumerate(prompts):
            for name in names:
                print(json.dumps({"prompt": prompt, "model": name, "response": answers[name][i]}, ensure_ascii=False))
    elif len(names) == 1:
        for i, prompt in enumerate(prompts):
            print(answers[names[0]][i] if len(prompts) == 1 else f">>> {prompt}\n{answers[names[0]][i]}\n")
    else:
        for i, prompt in enumerate(prompts):
            print(side_by_side(prompt, {name: answers[name][i] for name in names}))
    return 0


def _prompts(args: argparse.Namespace) -> list[str]:
    """--prompt texts, then --prompts-file lines; every text checked before the model loads (issue 29)."""
    prompts = list(args.prompt)
    for i, text in enumerate(prompts, start=1):
        check_unicode(text, f"--prompt {i}")
    for option, texts in (("--system", [args.system] if args.system else []), ("--stop", args.stop)):
        for text in texts:
            check_unicode(text, option)
    if args.prompts_file:
        prompts += _file_prompts(args.prompts_file)
    return prompts


def _file_prompts(path: str) -> list[str]:
    """The non-blank lines of `path` ('-' = stdin), decoded line by line so a bad one is named."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise LoraRlhfError(f"--prompts-file {path!r}: {exc.strerror or exc}") from None
    prompts = []
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LoraRlhfError(f"--prompts-file {path}, line {number}: byte {exc.start} is not UTF-8") from None
        if text.strip():
            prompts.append(text)
    return prompts


def _check_budget(registry, prompts: list[str], args: argparse.Namespace) -> None:
    """Refuse a --max-new-tokens that, after the longest prompt, runs past the base's position limit.

    transformers only warns and goes on, on positions the model never saw (GPT-2's learned positions index out
    of range); the server answers 400 for the same request (serve/limits.py), and so does vLLM.
    """
    context = registry.context_length
    if context is None:
        return
    chat = not args.no_chat_template
    tokens = max(registry.count_tokens(registry.render(p, chat=chat, system=args.system)) for p in prompts)
    if tokens + args.max_new_tokens > context:
        left = f"at most {context - tokens} are left" if tokens < context else "no room is left"
        raise LoraRlhfError(
            f"--max-new-tokens: {args.max_new_tokens} tokens and the longest prompt's {tokens} exceed this model's "
            f"context of {context} tokens (its position limit); {left}"
        )


def _models(args: argparse.Namespace, available: list[str]) -> list[str]:
    if args.model:
        return list(dict.fromkeys(args.model))
    if args.compare:
        return available
    adapters = available[1:]
    return ["policy"] if "policy" in adapters else adapters[-1:] or ["base"]


def side_by_side(prompt: str, answers: dict[str, str], width: int | None = None) -> str:
    """The prompt, then one column per model with its response wrapped to fit the terminal."""
    width = width or shutil.get_terminal_size((120, 24)).columns
    column = max(16, (width - 3 * (len(answers) - 1)) // len(answers))
    cells = [[name, "-" * min(column, max(len(name), 8)), *_wrap(text, column)] for name, text in answers.items()]
    rows = max(len(c) for c in cells)
    lines = [f">>> {prompt}"]
    for r in range(rows):
        lines.append(" | ".join((c[r] if r < len(c) else "").ljust(column) for c in cells).rstrip())
    return "\n".join(lines) + "\n"


def _wrap(text: str, width: int) -> list[str]:
    lines = []
    for paragraph in text.splitlines() or [""]:
        lines += textwrap.wrap(paragraph, width) or [""]
    return lines
