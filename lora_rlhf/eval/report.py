"""report.md: the eval table, side-by-side examples and the plots, for people rather than programs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lora_rlhf.eval import plots
from lora_rlhf.io import atomic_file
from lora_rlhf.metrics import read_metrics


def results_table(results: Mapping[str, Any]) -> str:
    """Markdown table: one row per model with its gold score, RM score and win rate against the base."""
    names = list(results.get("gold") or results.get("reward") or {})
    columns = [(k, label) for k, label in (("gold", "gold score"), ("reward", "RM score")) if k in results]
    header = "| model | " + " | ".join(label for _, label in columns) + " | win rate vs base |"
    lines = [header, "|---" * (len(columns) + 2) + "|"]
    wins = results.get("win_rate", {})
    for name in names:
        cells = [f"{results[key][name]:.3f}" for key, _ in columns]
        win = wins.get(f"{name}_vs_base")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'—' if win is None else f'{win:.2f}'} |")
    return "\n".join(lines)


def _make_plots(run_dir: Path, results: Mapping[str, Any]) -> list[tuple[str, Path]]:
    out = run_dir / "plots"
    made: list[tuple[str, Path | None]] = []
    if "gold" in results:
        made.append(("Gold score by model", plots.plot_scores(results["gold"], out / "gold.png", title="Gold score on held-out prompts", ylabel="mean gold score")))
    if "reward" in results:
        made.append(("RM score by model", plots.plot_scores(results["reward"], out / "reward.png", title="Reward-model score on held-out prompts", ylabel="mean RM score")))
    if results.get("win_rate"):
        made.append(("Win rates", plots.plot_win_rates(results["win_rate"], out / "win_rate.png")))
    ppo_rows = read_metrics(run_dir / "metrics" / "ppo.jsonl")
    made.append(("PPO training", plots.plot_ppo_curves(ppo_rows, out / "ppo.png")))
    made.append(("SFT and RM training", plots.plot_stage_losses(
        read_metrics(run_dir / "metrics" / "sft.jsonl"), read_metrics(run_dir / "metrics" / "rm.jsonl"), out / "stages.png")))
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
    figures = _make_plots(run_dir, results)
    judge = results.get("win_rate_judge")
    lines = [
        "# lora_rlhf evaluation",
        "",
        f"{results['prompts']} held-out prompts. Win rates are judged by the "
        f"{'gold labeler' if judge == 'gold' else 'reward model'} (a tie counts one half).",
        "",
        results_table(results),
        "",
    ]
    if results.get("kl") is not None:
        lines.append(f"KL(ppo ‖ sft), summed over the policy's response tokens, mean over prompts: **{results['kl']:.3f}** nats.  ")
    if results.get("rm_accuracy") is not None:
        lines.append(f"Reward model held-out pairwise accuracy: **{results['rm_accuracy']:.3f}**.")
    if results.get("win_rate"):
        lines += ["", "| comparison | win rate |", "|---|---|"]
        lines += [f"| {k.replace('_vs_', ' vs ')} | {v:.2f} |" for k, v in results["win_rate"].items()]
    lines += ["", "## Plots", ""]
    lines += [f"![{title}](plots/{path.name})\n" for title, path in figures]
    if examples:
        lines += ["## Examples", "", _examples(prompts, texts, examples)]
    path = run_dir / "report.md"
    with atomic_file(path) as handle:
        handle.write("\n".join(lines) + "\n")
    return path
