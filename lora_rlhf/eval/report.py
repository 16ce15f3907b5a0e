"""report.md: the eval table, whether the differences are real, side-by-side examples and the plots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lora_rlhf.eval import ifeval_report, plots
from lora_rlhf.io import atomic_file
from lora_rlhf.metrics import read_metrics
from lora_rlhf.paths import RunLayout

# Below this many prompts percentile bootstrap intervals are noticeably too narrow (the "narrowness bias",
# Hesterberg 2015, "What teachers should know about the bootstrap"), so the report says so.
_FEW_PROMPTS = 20


def _interval(iv: Sequence[float] | None, digits: int = 3) -> str:
    return "" if iv is None else f" [{iv[0]:.{digits}f}, {iv[1]:.{digits}f}]"


def _level(results: Mapping[str, Any]) -> str:
    return f"{round(100 * results.get('confidence', 0.95))}%"


def results_table(results: Mapping[str, Any]) -> str:
    """Markdown table: one row per model with its gold score (and CI of the mean), RM score and win rate vs base."""
    names = list(results.get("gold") or results.get("reward") or {})
    level = _level(results)
    columns = [
        (key, label, ci)
        for key, label, ci in (
            ("gold", f"gold score [{level} CI]", "gold_mean_ci"),
            ("reward", f"RM score [{level} CI]", "reward_mean_ci"),
        )
        if key in results
    ]
    header = "| model | " + " | ".join(label for _, label, _ in columns) + " | win rate vs base |"
    lines = [header, "|---" * (len(columns) + 2) + "|"]
    wins = results.get("win_rate", {})
    for name in names:
        cells = [f"{results[key][name]:.3f}{_interval(results.get(ci, {}).get(name))}" for key, _, ci in columns]
        win = wins.get(f"{name}_vs_base")
        win_ci = results.get("win_rate_ci", {}).get(f"{name}_vs_base")
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {'—' if win is None else f'{win:.2f}{_interval(win_ci, 2)}'} |"
        )
    return "\n".join(lines)


def _verdict(interval: Sequence[float], null: float) -> str:
    if interval[0] > null or interval[1] < null:
        return f"excludes {null:g}: likely real"
    return f"includes {null:g}: not distinguishable from noise"


def _difference_rows(results: Mapping[str, Any]) -> list[tuple[str, str, Sequence[float], float, int]]:
    """(label, estimate, interval, value meaning "no difference", digits) for every paired comparison."""
    rows = []
    for key, interval in results.get("gold_ci", {}).items():
        later, earlier = key.split("_minus_")
        estimate = results["gold"][later] - results["gold"][earlier]
        rows.append((f"gold: {later} − {earlier}", f"{estimate:+.3f}", interval, 0.0, 3))
    judge = "gold" if results.get("win_rate_judge") == "gold" else "RM"
    for key, interval in results.get("win_rate_ci", {}).items():
        rows.append(
            (f"win rate ({judge}): {key.replace('_vs_', ' vs ')}", f"{results['win_rate'][key]:.2f}", interval, 0.5, 2)
        )
    bon, bon_ci = results.get("best_of_n", {}), results.get("best_of_n_ci", {})
    if "bon_minus_sample" in bon_ci:
        estimate = bon["gold"] - bon["gold_sft_sample"]
        rows.append(
            (f"gold: best-of-{bon['n']} − one sft sample", f"{estimate:+.3f}", bon_ci["bon_minus_sample"], 0.0, 3)
        )
    if "bon_minus_sft" in bon_ci:
        estimate = bon["gold"] - bon.get("gold_sft_greedy", bon.get("gold_sft_samples", results["gold"]["sft"]))
        baseline = "greedy" if "gold_sft_greedy" in bon else "its samples"
        rows.append(
            (f"gold: best-of-{bon['n']} − sft ({baseline})", f"{estimate:+.3f}", bon_ci["bon_minus_sft"], 0.0, 3)
        )
    return rows


def decoding_phrase(results: Mapping[str, Any]) -> str:
    """How the answers were drawn, e.g. "greedy answers" or "4 samples per prompt at temperature 1 (...)"."""
    temperature, n = results.get("temperature", 0.0), results.get("samples_per_prompt", 1)
    if not temperature:
        return "greedy answers"
    if n == 1:
        return f"one sample per prompt at temperature {temperature:g}"
    return (
        f"{n} samples per prompt at temperature {temperature:g} (a model's score on a prompt is its samples' mean, "
        "and wins are judged on those means)"
    )


def difference_section(results: Mapping[str, Any]) -> list[str]:
    """ "Is the difference real?": every paired interval (gold differences, win rates, best-of-N)."""
    rows = _difference_rows(results)
    if not rows:
        return []
    level = _level(results)
    lines = [
        "## Is the difference real?",
        "",
        f"{level} paired bootstrap intervals over the {results['prompts']} prompts "
        f"({results.get('bootstrap_samples', '?')} resamples of the prompts, "
        "both models' answers to a prompt kept together). "
        "A difference whose interval excludes 0, or a win rate whose interval excludes 0.5, is unlikely to be "
        "an accident of which prompts were drawn.",
        "",
    ]
    if results["prompts"] < _FEW_PROMPTS:
        lines += [
            f"**Only {results['prompts']} prompts:** with fewer than {_FEW_PROMPTS} the bootstrap sees too little "
            "variation and these intervals come out too narrow; read them as optimistic.",
            "",
        ]
    lines += [f"| comparison | estimate | {level} interval | |", "|---|---|---|---|"]
    lines += [
        f"| {label} | {estimate} |{_interval(iv, digits)} | {_verdict(iv, null)} |"
        for label, estimate, iv, null, digits in rows
    ]
    return lines + [""]


def rm_accuracy_lines(results: Mapping[str, Any]) -> list[str]:
    if results.get("rm_accuracy_source") != "rankings":
        if results.get("rm_accuracy") is None:
            return []
        return [
            "Reward model held-out pairwise accuracy (last value the rm stage logged; no interval): "
            f"**{results['rm_accuracy']:.3f}**.",
            "",
        ]
    lines = [
        f"Reward model pairwise accuracy on {results.get('rm_accuracy_rows', 0)} held-out rankings "
        f"({results.get('rm_accuracy_skipped_rows', 0)} unusable rows skipped; "
        f"{_level(results)} intervals resample prompts):",
        "",
    ]
    for prefix, against in (("rm_accuracy", "the labels"), ("rm_accuracy_gold", "the gold judge")):
        if results.get(prefix) is not None:
            lines.append(
                f"- against {against}: **{results[prefix]:.3f}**{_interval(results[prefix + '_ci'])} "
                f"over {results[prefix + '_pairs']} pairs"
            )
        elif f"{prefix}_pairs" in results:
            lines.append(f"- against {against}: no untied pair")
    return lines + [""]


def extra_lines(results: Mapping[str, Any]) -> list[str]:
    """KL, best-of-N and LM loss (alignment tax) lines."""
    lines = []
    kls = results.get("kl_to_sft") or ({"ppo": results["kl"]} if results.get("kl") is not None else {})
    for name, kl in kls.items():
        lines += [
            f"KL({name} ‖ sft), summed over {name}'s response tokens, mean over prompts: **{kl:.3f}** nats.",
            "",
        ]
    bon = results.get("best_of_n")
    if bon:
        scope = (
            f" on the first {bon['prompts']} prompts"
            if bon.get("prompts") not in (None, results.get("prompts"))
            else ""
        )
        text = (
            f"Best-of-{bon['n']}{scope} (sft samples at temperature {bon['temperature']:g}, "
            "the RM picks one; Gao et al. 2022): "
            f"RM score of the picks **{bon['reward']:.3f}**"
        )
        if "gold" in bon:
            text += (
                f", gold **{bon['gold']:.3f}**{_interval(bon.get('gold_ci'))} against {bon['gold_sft_sample']:.3f} "
                "for one random sft sample — if the pick does not beat a random sample, "
                "the RM gives PPO nothing to climb"
            )
        lines += [text + ".", ""]
    if results.get("lm_loss"):
        lines += [
            "LM loss on held-out text (mean NLL per token, nats; "
            "higher after RLHF = the alignment tax, InstructGPT §4.2):",
            "",
            "| model | LM loss |",
            "|---|---|",
        ]
        lines += [f"| {name} | {value:.4f} |" for name, value in results["lm_loss"].items()] + [""]
    return lines


def _make_plots(run_dir: Path, results: Mapping[str, Any]) -> list[tuple[str, Path]]:
    run = RunLayout(run_dir)
    out = run.plots
    made: list[tuple[str, Path | None]] = []
    if "gold" in results:
        gold, intervals = dict(results["gold"]), dict(results.get("gold_mean_ci", {}))
        bon = results.get("best_of_n", {})
        if "gold" in bon:
            label = f"sft best-of-{bon['n']}"
            if bon.get("prompts") not in (None, results.get("prompts")):
                label += f"\n(first {bon['prompts']} prompts)"
            gold[label] = bon["gold"]
            intervals[label] = bon["gold_ci"]
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
    if "reward" in results:
        made.append(
            (
                "RM score by model",
                plots.plot_scores(
                    results["reward"],
                    out / "reward.png",
                    title="Reward-model score on held-out prompts",
                    ylabel="mean RM score",
                    intervals=results.get("reward_mean_ci"),
                ),
            )
        )
    if results.get("win_rate"):
        made.append(("Win rates", plots.plot_win_rates(results["win_rate"], out / "win_rate.png")))
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
    run_dir: Path, results: Mapping[str, Any], prompts: Sequence[Any], texts: Mapping[str, Sequence[str]], examples: int
) -> Path:
    """Write plots/*.png and report.md into `run_dir`."""
    lines = ["# lora_rlhf evaluation", ""]
    if "prompts" in results:  # absent where only a benchmark was run (eval --benchmark on a fresh run)
        figures = _make_plots(run_dir, results)
        judge = results.get("win_rate_judge")
        lines += [
            f"{results['prompts']} held-out prompts, {decoding_phrase(results)}. Win rates are judged by the "
            f"{'gold labeler' if judge == 'gold' else 'reward model'} (a tie counts one half); "
            f"brackets are {_level(results)} bootstrap intervals.",
            "",
            results_table(results),
            "",
        ]
        lines += difference_section(results) + rm_accuracy_lines(results) + extra_lines(results)
    else:
        figures = []
    if results.get("ifeval"):
        lines += ifeval_report.report_lines(
            results["ifeval"], ifeval_report.plot_accuracies(results["ifeval"], RunLayout(run_dir).plot("ifeval"))
        )
    lines += ["## Plots", ""]
    lines += [f"![{title}](plots/{path.name})\n" for title, path in figures]
    if examples:
        lines += ["## Examples", "", _examples(prompts, texts, examples)]
    path = RunLayout(run_dir).report
    with atomic_file(path) as handle:
        handle.write("\n".join(lines) + "\n")
    return path
