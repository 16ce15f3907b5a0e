"""report.md: the eval table, whether the differences are real, side-by-side examples and the plots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lora_rlhf.eval import ifeval_report, plots
from lora_rlhf.eval.result import EvalResult
from lora_rlhf.io import atomic_file
from lora_rlhf.metrics import read_metrics
from lora_rlhf.paths import RunLayout

# Below this many prompts percentile bootstrap intervals are noticeably too narrow (the "narrowness bias",
# Hesterberg 2015, "What teachers should know about the bootstrap"), so the report says so.
_FEW_PROMPTS = 20


def _interval(iv: Sequence[float] | None, digits: int = 3) -> str:
    return "" if iv is None else f" [{iv[0]:.{digits}f}, {iv[1]:.{digits}f}]"


def _level(results: EvalResult) -> str:
    return f"{round(100 * (results.confidence or 0.95))}%"


def results_table(results: EvalResult) -> str:
    """Markdown table: one row per model with its gold score (and CI of the mean), RM score and win rate vs base."""
    names = list(results.gold or results.reward or {})
    level = _level(results)
    columns = [
        (scores, label, intervals or {})
        for scores, label, intervals in (
            (results.gold, f"gold score [{level} CI]", results.gold_mean_ci),
            (results.reward, f"RM score [{level} CI]", results.reward_mean_ci),
        )
        if scores is not None
    ]
    header = "| model | " + " | ".join(label for _, label, _ in columns) + " | win rate vs base |"
    lines = [header, "|---" * (len(columns) + 2) + "|"]
    wins, win_cis = results.win_rate or {}, results.win_rate_ci or {}
    for name in names:
        cells = [f"{scores[name]:.3f}{_interval(intervals.get(name))}" for scores, _, intervals in columns]
        win, win_ci = wins.get(f"{name}_vs_base"), win_cis.get(f"{name}_vs_base")
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {'—' if win is None else f'{win:.2f}{_interval(win_ci, 2)}'} |"
        )
    return "\n".join(lines)


def _verdict(interval: Sequence[float], null: float) -> str:
    if interval[0] > null or interval[1] < null:
        return f"excludes {null:g}: likely real"
    return f"includes {null:g}: not distinguishable from noise"


def _difference_rows(results: EvalResult) -> list[tuple[str, str, Sequence[float], float, int]]:
    """(label, estimate, interval, value meaning "no difference", digits) for every paired comparison."""
    rows = []
    gold = results.gold or {}
    for key, interval in (results.gold_ci or {}).items():
        later, earlier = key.split("_minus_")
        rows.append((f"gold: {later} − {earlier}", f"{gold[later] - gold[earlier]:+.3f}", interval, 0.0, 3))
    judge = "gold" if results.win_rate_judge == "gold" else "RM"
    for key, interval in (results.win_rate_ci or {}).items():
        label = f"win rate ({judge}): {key.replace('_vs_', ' vs ')}"
        rows.append((label, f"{(results.win_rate or {})[key]:.2f}", interval, 0.5, 2))
    bon = results.best_of_n
    if bon is not None and bon.gold is not None and bon.gold_minus_sample_ci is not None:
        estimate = bon.gold - bon.gold_random_sample
        rows.append((f"gold: best-of-{bon.n} − one sft sample", f"{estimate:+.3f}", bon.gold_minus_sample_ci, 0.0, 3))
    if bon is not None and bon.gold is not None and bon.gold_minus_sft_ci is not None:
        # Files from before the baseline was recorded: sft's gold over all the eval prompts.
        estimate = bon.gold - (bon.gold_sft if bon.gold_sft is not None else gold["sft"])
        baseline = "greedy" if not results.temperature else "its samples"
        rows.append((f"gold: best-of-{bon.n} − sft ({baseline})", f"{estimate:+.3f}", bon.gold_minus_sft_ci, 0.0, 3))
    return rows


def decoding_phrase(results: EvalResult) -> str:
    """How the answers were drawn, e.g. "greedy answers" or "4 samples per prompt at temperature 1 (...)"."""
    temperature, n = results.temperature or 0.0, results.samples_per_prompt or 1
    if not temperature:
        return "greedy answers"
    if n == 1:
        return f"one sample per prompt at temperature {temperature:g}"
    return (
        f"{n} samples per prompt at temperature {temperature:g} (a model's score on a prompt is its samples' mean, "
        "and wins are judged on those means)"
    )


def difference_section(results: EvalResult) -> list[str]:
    """ "Is the difference real?": every paired interval (gold differences, win rates, best-of-N)."""
    rows = _difference_rows(results)
    if not rows:
        return []
    level = _level(results)
    resamples = "?" if results.bootstrap_samples is None else results.bootstrap_samples
    lines = [
        "## Is the difference real?",
        "",
        f"{level} paired bootstrap intervals over the {results.prompts} prompts "
        f"({resamples} resamples of the prompts, "
        "both models' answers to a prompt kept together). "
        "A difference whose interval excludes 0, or a win rate whose interval excludes 0.5, is unlikely to be "
        "an accident of which prompts were drawn.",
        "",
    ]
    if results.prompts < _FEW_PROMPTS:
        lines += [
            f"**Only {results.prompts} prompts:** with fewer than {_FEW_PROMPTS} the bootstrap sees too little "
            "variation and these intervals come out too narrow; read them as optimistic.",
            "",
        ]
    lines += [f"| comparison | estimate | {level} interval | |", "|---|---|---|---|"]
    lines += [
        f"| {label} | {estimate} |{_interval(iv, digits)} | {_verdict(iv, null)} |"
        for label, estimate, iv, null, digits in rows
    ]
    return lines + [""]


def rm_accuracy_lines(results: EvalResult) -> list[str]:
    rm = results.rm_accuracy
    if rm is None or rm.source != "rankings":
        if rm is None or rm.labels.accuracy is None:
            return []
        return [
            "Reward model held-out pairwise accuracy (last value the rm stage logged; no interval): "
            f"**{rm.labels.accuracy:.3f}**.",
            "",
        ]
    lines = [
        f"Reward model pairwise accuracy on {rm.rows or 0} held-out rankings "
        f"({rm.skipped_rows or 0} unusable rows skipped; "
        f"{_level(results)} intervals resample prompts):",
        "",
    ]
    for pair, against in ((rm.labels, "the labels"), (rm.gold, "the gold judge")):
        if pair is not None and pair.accuracy is not None:
            lines.append(f"- against {against}: **{pair.accuracy:.3f}**{_interval(pair.ci)} over {pair.pairs} pairs")
        elif pair is not None:
            lines.append(f"- against {against}: no untied pair")
    return lines + [""]


def extra_lines(results: EvalResult) -> list[str]:
    """KL, best-of-N and LM loss (alignment tax) lines."""
    lines = []
    for name, kl in (results.kl_to_sft or {}).items():
        lines += [
            f"KL({name} ‖ sft), summed over {name}'s response tokens, mean over prompts: **{kl:.3f}** nats.",
            "",
        ]
    bon = results.best_of_n
    if bon is not None:
        scope = f" on the first {bon.prompts} prompts" if bon.prompts not in (None, results.prompts) else ""
        text = (
            f"Best-of-{bon.n}{scope} (sft samples at temperature {bon.temperature:g}, "
            "the RM picks one; Gao et al. 2022): "
            f"RM score of the picks **{bon.reward:.3f}**"
        )
        if bon.gold is not None:
            text += (
                f", gold **{bon.gold:.3f}**{_interval(bon.gold_ci)} against {bon.gold_random_sample:.3f} "
                "for one random sft sample — if the pick does not beat a random sample, "
                "the RM gives PPO nothing to climb"
            )
        lines += [text + ".", ""]
    if results.lm_loss:
        lines += [
            "LM loss on held-out text (mean NLL per token, nats; "
            "higher after RLHF = the alignment tax, InstructGPT §4.2):",
            "",
            "| model | LM loss |",
            "|---|---|",
        ]
        lines += [f"| {name} | {value:.4f} |" for name, value in results.lm_loss.items()] + [""]
    return lines


def _make_plots(run_dir: Path, results: EvalResult) -> list[tuple[str, Path]]:
    run = RunLayout(run_dir)
    out = run.plots
    made: list[tuple[str, Path | None]] = []
    if results.gold is not None:
        gold, intervals = dict(results.gold), dict(results.gold_mean_ci or {})
        bon = results.best_of_n
        if bon is not None and bon.gold is not None:
            label = f"sft best-of-{bon.n}"
            if bon.prompts not in (None, results.prompts):
                label += f"\n(first {bon.prompts} prompts)"
            gold[label] = bon.gold
            intervals[label] = bon.gold_ci
        made.append(
            (
                "Gold score by model",
                plots.plot_scores(
                    gold,
                    out / "gold.png",
                    title="Gold score on held-out prompts",
                    ylabel=f"mean gold score ({_level(results)} CI)",
                    intervals=intervals,
                ),
            )
        )
    if results.reward is not None:
        made.append(
            (
                "RM score by model",
                plots.plot_scores(
                    results.reward,
                    out / "reward.png",
                    title="Reward-model score on held-out prompts",
                    ylabel="mean RM score",
                    intervals=results.reward_mean_ci,
                ),
            )
        )
    if results.win_rate:
        made.append(("Win rates", plots.plot_win_rates(results.win_rate, out / "win_rate.png")))
    ppo_rows = read_metrics(run.metrics("ppo"))
    made.append(("PPO training", plots.plot_ppo_curves(ppo_rows, out / "ppo.png")))
    dpo_rows = read_metrics(run.metrics("dpo"))
    made.append(("DPO training", plots.plot_dpo_curves(dpo_rows, out / "dpo.png")))
    made.append(
        (
            "SFT and RM training",
            plots.plot_stage_losses(
                read_metrics(run.metrics("sft")),
                read_metrics(run.metrics("rm")),
                out / "stages.png",
            ),
        )
    )
    return [(title, path) for title, path in made if path is not None]


def _examples(prompts: Sequence[Any], texts: Mapping[str, Sequence[str]], n: int) -> str:
    blocks = []
    for i in range(min(n, len(prompts))):
        prompt = prompts[i] if isinstance(prompts[i], str) else prompts[i][-1]["content"]
        rows = "\n".join(f"| **{name}** | {_cell(texts[name][i])} |" for name in texts)
        blocks.append(f"**Prompt:** {_cell(prompt)}\n\n| model | response |\n|---|---|\n{rows}\n")
    return "\n".join(blocks)


def _cell(text: str) -> str:
    return (text.replace("|", "\\|").replace("\n", " ⏎ ").strip() or "*(empty)*")[:300]


def write_report(
    run_dir: Path, results: EvalResult, prompts: Sequence[Any], texts: Mapping[str, Sequence[str]], examples: int
) -> Path:
    """Write plots/*.png and report.md into `run_dir`."""
    lines = ["# lora_rlhf evaluation", ""]
    if results.prompts is not None:  # None where only a benchmark was run (eval --benchmark on a fresh run)
        figures = _make_plots(run_dir, results)
        judge = results.win_rate_judge
        lines += [
            f"{results.prompts} held-out prompts, {decoding_phrase(results)}. Win rates are judged by the "
            f"{'gold labeler' if judge == 'gold' else 'reward model'} (a tie counts one half); "
            f"brackets are {_level(results)} bootstrap intervals.",
            "",
            results_table(results),
            "",
        ]
        lines += difference_section(results) + rm_accuracy_lines(results) + extra_lines(results)
    else:
        figures = []
    if results.ifeval is not None:
        lines += ifeval_report.report_lines(
            results.ifeval, ifeval_report.plot_accuracies(results.ifeval, RunLayout(run_dir).plot("ifeval"))
        )
    lines += ["## Plots", ""]
    lines += [f"![{title}](plots/{path.name})\n" for title, path in figures]
    if examples:
        lines += ["## Examples", "", _examples(prompts, texts, examples)]
    path = RunLayout(run_dir).report
    with atomic_file(path) as handle:
        handle.write("\n".join(lines) + "\n")
    return path
