"""The report's pictures (matplotlib, written as PNG without a display)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lora_rlhf.io import atomic_file

_COLORS = {"base": "#9e9e9e", "sft": "#4f81bd", "ppo": "#c0504d", "dpo": "#9bbb59"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and r.get("split") != "eval"]
    return [p[0] for p in points], [float(p[1]) for p in points]


def plot_ppo_curves(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """PPO reward, KL and (where a gold judge exists) gold score over steps, one panel each."""
    keys = [k for k in ("reward", "kl", "gold") if _series(rows, k)[0]]
    if not keys:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    titles = {"reward": "RM score (mean)", "kl": "KL to reference (per sequence)", "gold": "gold score (mean)"}
    for ax, key in zip(axes[0], keys):
        steps, values = _series(rows, key)
        ax.plot(steps, values, color=_COLORS["ppo"], marker="o", markersize=2.5, linewidth=1.2)
        ax.set_title(titles[key])
        ax.set_xlabel("PPO step")
        ax.grid(alpha=0.3)
    fig.suptitle("PPO training", y=1.04)  # above the panel titles, not over them
    return _save(fig, path)


def plot_dpo_curves(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """DPO loss, implicit reward margin and preference accuracy (TRL's names, docs/dpo.md), train and held-out."""
    panels = [
        (key, title)
        for key, title in (
            ("loss", "DPO loss"),
            ("rewards/margins", "implicit reward margin"),
            ("rewards/accuracies", "preference accuracy"),
        )
        if any(key in r for r in rows)
    ]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for split, style in (("train", "-"), ("eval", "o--")):
            points = [(r["step"], r[key]) for r in rows if key in r and r.get("split", "train") == split]
            if points:
                ax.plot(*zip(*points), style, color=_COLORS["dpo"], label=split, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("DPO step")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle("DPO training", y=1.04)
    return _save(fig, path)


def plot_scores(
    scores: Mapping[str, float],
    path: Path,
    *,
    title: str,
    ylabel: str,
    intervals: Mapping[str, Sequence[float]] | None = None,
) -> Path:
    """One bar per model (base, sft, ppo, and e.g. a best-of-N bar): InstructGPT's Fig. 1 at small scale.

    `intervals` ({name: [lo, hi]}, the CI of each mean) draws error bars, so a gap within the noise shows.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(scores), 3.4))
    names = list(scores)
    heights = [scores[n] for n in names]
    errors = _error_bars(heights, [(intervals or {}).get(n) for n in names]) if intervals else None
    bars = ax.bar(names, heights, color=[_COLORS.get(n, "#8064a2") for n in names], yerr=errors, capsize=4)
    ax.bar_label(bars, fmt="%.3f", label_type="center")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _error_bars(heights: Sequence[float], intervals: Sequence[Sequence[float] | None]) -> list[list[float]]:
    """[lo, hi] per bar -> matplotlib's (2, n) distances below and above the bar (0 where none is known)."""
    below = [max(h - iv[0], 0.0) if iv else 0.0 for h, iv in zip(heights, intervals)]
    above = [max(iv[1] - h, 0.0) if iv else 0.0 for h, iv in zip(heights, intervals)]
    return [below, above]


def plot_win_rates(win_rates: Mapping[str, float], path: Path) -> Path:
    """Horizontal bars of pairwise win rates with the 50% line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 0.6 + 0.55 * len(win_rates)))
    names = [k.replace("_vs_", " vs ") for k in win_rates]
    bars = ax.barh(names, list(win_rates.values()), color="#4f81bd")
    ax.bar_label(bars, fmt="%.2f")
    ax.axvline(0.5, color="black", linewidth=0.8, linestyle="--")
    ax.set_xlim(0, 1)
    ax.set_xlabel("win rate (ties count 1/2)")
    ax.set_title("Pairwise win rates")
    return _save(fig, path)


def plot_stage_losses(
    sft_rows: Sequence[Mapping[str, Any]], rm_rows: Sequence[Mapping[str, Any]], path: Path
) -> Path | None:
    """SFT loss and RM loss / accuracy, train and held-out."""
    candidates = (
        (sft_rows, "loss", "SFT loss"),
        (rm_rows, "loss", "RM loss"),
        (rm_rows, "accuracy", "RM pairwise accuracy"),
    )
    panels = [panel for panel in candidates if panel[0]]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (rows, key, title) in zip(axes[0], panels):
        for split, style in (("train", "-"), ("eval", "o--")):
            points = [(r["step"], r[key]) for r in rows if key in r and (r.get("split") == "eval") == (split == "eval")]
            if points:
                ax.plot(*zip(*points), style, label=split, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend()
        ax.grid(alpha=0.3)
    return _save(fig, path)
