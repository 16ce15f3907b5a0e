"""report.md's IFEval section (the four accuracies per model, the per-instruction table) and its plot."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from lora_rlhf.eval.plots import _COLORS, _pyplot, _save
from lora_rlhf.eval.result import IFEvalSection

logger = logging.getLogger(__name__)

# SmolLM2-135M-Instruct's model card: "IFEval (average prompt/inst)" 29.9 (HuggingFaceTB/SmolLM2-135M-Instruct).
MODEL_CARD = {"name": "SmolLM2-135M-Instruct", "ifeval": 29.9}
_LABELS = {
    "prompt_strict": "prompt strict",
    "prompt_loose": "prompt loose",
    "instruction_strict": "instruction strict",
    "instruction_loose": "instruction loose",
}


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _ci(interval: Sequence[float] | None) -> str:
    return "" if interval is None else f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def accuracy_table(section: IFEvalSection) -> list[str]:
    """One row per model: the four accuracies (%, prompt-level with their interval) and the cards' average."""
    lines = [
        "| model | " + " | ".join(_LABELS.values()) + " | average (prompt/inst, strict) |",
        "|---" * 6 + "|",
    ]
    for name, scores in section.accuracy.items():
        cells = []
        for key in _LABELS:
            mode = key.split("_")[1]
            interval = section.accuracy_ci.get(f"{name}_{mode}") if key.startswith("prompt") else None
            cells.append(_pct(scores[key]) + _ci(interval))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_pct(section.headline[name])} |")
    return lines


def difference_table(section: IFEvalSection) -> list[str]:
    lines = ["| comparison (prompt level) | difference (points) | paired interval | |", "|---|---|---|---|"]
    for key, interval in section.diff_ci.items():
        pair, mode = key.rsplit("_", 1)
        verdict = "excludes 0" if interval[0] > 0 or interval[1] < 0 else "includes 0"
        lines.append(
            f"| {pair.replace('_minus_', ' − ')} ({mode}) | {100 * section.diff[key]:+.1f} |{_ci(interval)} "
            f"| {verdict} |"
        )
    return lines


def instruction_table(section: IFEvalSection) -> list[str]:
    """Per instruction id: how often each model follows it (loose, %), and what the last model changed."""
    per = section.per_instruction
    names = list(per)
    ids = sorted({i for table in per.values() for i in table})
    lines = [
        "| instruction | n | " + " | ".join(f"{n} loose" for n in names) + " | change (last − previous) |",
        "|---" * (len(names) + 3) + "|",
    ]
    for instruction in ids:
        rates = [per[n].get(instruction, {}).get("loose") for n in names]
        change = f"{100 * (rates[-1] - rates[-2]):+.1f}" if len(rates) > 1 and None not in rates[-2:] else "—"
        count = next(per[n][instruction]["count"] for n in names if instruction in per[n])
        cells = " | ".join("—" if r is None else _pct(r) for r in rates)
        lines.append(f"| `{instruction}` | {count} | {cells} | {change} |")
    return lines


def report_lines(section: IFEvalSection, figure: Path | None) -> list[str]:
    """The "IFEval" section of report.md."""
    budget = "?" if section.max_new_tokens is None else section.max_new_tokens
    lines = [
        "## IFEval (Zhou et al. 2023)",
        "",
        f"{section.prompts} prompts, {section.decoding or 'greedy'} answers of at most "
        f"{budget} new tokens through {section.chat_template or 'the chat template'}, "
        "judged by Google's checkers (strict: the answer as written; loose: also with its first/last line or "
        "markdown asterisks removed). Accuracies in %; brackets are 95% bootstrap intervals over prompts. "
        f"For reference, {MODEL_CARD['name']}'s model card reports {MODEL_CARD['ifeval']} "
        "(average of prompt- and instruction-level accuracy).",
        "",
        *accuracy_table(section),
        "",
        *difference_table(section),
        "",
    ]
    if section.hit_max_new_tokens:
        cut = ", ".join(f"{name} {n}" for name, n in section.hit_max_new_tokens.items())
        lines += [f"Answers that used the whole token budget (likely cut off): {cut}.", ""]
    lines += ["Per instruction (how often it is followed where a prompt asks for it):", ""]
    lines += instruction_table(section) + [""]
    if figure is not None:
        lines += [f"![IFEval accuracy by model](plots/{figure.name})", ""]
    lines += [f"Responses: {', '.join(f'`{p}`' for p in (section.responses or {}).values())}.", ""]
    return lines


def plot_accuracies(section: IFEvalSection, path: Path) -> Path | None:
    """Grouped bars: the four accuracies, one bar per model, prompt-level bars with their intervals; None (no plot,
    as the other plots of the report do with nothing to draw) where no model has accuracies."""
    names = list(section.accuracy)
    if not names:
        logger.info("IFEval plot skipped: no model's accuracies to draw")
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        heights = [100 * section.accuracy[name][key] for key in _LABELS]
        errors = [[0.0] * 4, [0.0] * 4]
        for j, key in enumerate(_LABELS):
            interval = section.accuracy_ci.get(f"{name}_{key.split('_')[1]}") if key.startswith("prompt") else None
            if interval is not None:
                errors[0][j] = max(heights[j] - 100 * interval[0], 0.0)
                errors[1][j] = max(100 * interval[1] - heights[j], 0.0)
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(4)]
        ax.bar(xs, heights, width, yerr=errors, capsize=3, label=name, color=_COLORS.get(name, "#8064a2"))
    ax.set_xticks(range(4), list(_LABELS.values()))
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"IFEval ({section.prompts} prompts)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
