"""ablation.json's rows from each method's eval.json, and ablation.md (the table, the notes to trust it and the
method-versus-method differences)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from lora_rlhf.eval.result import EvalResult, Interval
from lora_rlhf.pipeline.ablation.variants import EVAL_NAME, METHODS

T = TypeVar("T")

DASH = "—"


def _of(table: Mapping[str, T] | None, key: str) -> T | None:
    """table[key], or None where the table or the key is missing."""
    return None if table is None else table.get(key)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def sft_row(results: EvalResult) -> dict[str, Any]:
    # KL of sft to itself is 0 by definition: it is the reference (docs/design.md, "Roles on one base").
    return {
        "model": "sft",
        "method": "sft",
        "gold": _of(results.gold, "sft"),
        "gold_ci": _of(results.gold_mean_ci, "sft"),
        "gold_minus_sft": None,
        "gold_minus_sft_ci": None,
        "win_rate_vs_sft": None,
        "win_rate_vs_sft_ci": None,
        "reward": _of(results.reward, "sft"),
        "lm_loss": _of(results.lm_loss, "sft"),
        "kl": 0.0,
    }


def best_of_n_row(results: EvalResult) -> dict[str, Any]:
    """Best-of-N: its weights are sft's (same LM loss); its KL to sft is at most log N - (N-1)/N nats
    (the analytic bound of Stiennon et al. 2020 and Gao et al. 2022). No per-prompt picks are kept, so no win rate."""
    row: dict[str, Any] = {"model": "best-of-N (sft + RM)", "method": "best_of_n"}
    row |= dict.fromkeys(("gold", "gold_ci", "gold_minus_sft", "gold_minus_sft_ci", "win_rate_vs_sft"))
    row |= {"win_rate_vs_sft_ci": None, "reward": None, "lm_loss": None, "kl": None, "kl_is_bound": True}
    bon = results.best_of_n
    if bon is None:  # eval.best_of_n: 0
        return row
    # Best-of-N may run on the first eval prompts only: compare with sft's gold on those same prompts (greedy,
    # or its samples' mean), else (files from before that was recorded) with sft's gold on every prompt.
    baseline = bon.gold_sft if bon.gold_sft is not None else _of(results.gold, "sft")
    scope = f", first {bon.prompts} prompts" if bon.prompts not in (None, results.prompts) else ""
    row |= {
        "model": f"best-of-{bon.n} (sft + RM{scope})",
        "gold": bon.gold,
        "gold_ci": _list(bon.gold_ci),
        "gold_minus_sft": _minus(bon.gold, baseline),
        "gold_minus_sft_ci": _list(bon.gold_minus_sft_ci),
        "reward": bon.reward,
        "lm_loss": _of(results.lm_loss, "sft"),
        "kl": math.log(bon.n) - (bon.n - 1) / bon.n,
    }
    return row


def method_row(name: str, results: EvalResult, cost: Mapping[str, Any] | None) -> dict[str, Any]:
    """A trained method's row: its eval figures against sft (same prompts, same seed) and its training cost."""
    key = EVAL_NAME[METHODS[name].role]
    return {
        "model": METHODS[name].label,
        "method": name,
        "gold": _of(results.gold, key),
        "gold_ci": _list(_of(results.gold_mean_ci, key)),
        "gold_minus_sft": _minus(_of(results.gold, key), _of(results.gold, "sft")),
        "gold_minus_sft_ci": _list(_of(results.gold_ci, f"{key}_minus_sft")),
        "win_rate_vs_sft": _of(results.win_rate, f"{key}_vs_sft"),
        "win_rate_vs_sft_ci": _list(_of(results.win_rate_ci, f"{key}_vs_sft")),
        "reward": _of(results.reward, key),
        "lm_loss": _of(results.lm_loss, key),
        "kl": _of(results.kl_to_sft, key),
        "cost": dict(cost) if cost else None,
    }


def _list(interval: Interval | None) -> list[float] | None:
    """An interval as ablation.json writes it (a list, as eval.json does)."""
    return None if interval is None else list(interval)


def _fmt(value: float | None, interval: Sequence[float] | None = None, *, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    return text + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def _cost_cells(row: Mapping[str, Any]) -> list[str]:
    cost, budget = row.get("cost") or {}, row.get("budget") or {}
    steps, samples = budget.get("optimizer_steps"), budget.get("samples")
    wall, peak, start = cost.get("wall_s"), cost.get("peak_rss_mib"), cost.get("start_rss_mib")
    growth = f" (+{peak - start:.0f})" if peak is not None and start is not None else ""
    return [
        DASH if steps is None else str(steps),
        DASH if samples is None else str(samples),
        DASH if wall is None else f"{wall:.0f}",
        DASH if peak is None else f"{peak:.0f}{growth}",
    ]


def render_table(summary: Mapping[str, Any]) -> str:
    """ablation.md: one markdown table and the notes a reader needs to trust it."""
    level = f"{summary['confidence']:.0%}"
    header = [
        "model",
        f"gold [{level} CI]",
        f"gold − sft [paired {level} CI]",
        f"win rate vs sft [{level} CI]",
        "RM score",
        "held-out LM loss",
        "KL to sft (nats)",
        "optimizer steps",
        "samples trained on",
        "train wall (s)",
        "train peak RSS, MiB (+ over its start)",
    ]
    lines = [
        "# Ablation: sft, best-of-N, PPO, PPO-ptx, critic-free RL and DPO from one run's sft and reward",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in summary["rows"]:
        kl = _fmt(row["kl"])
        cells = [
            row["model"],
            _fmt(row["gold"], row["gold_ci"]),
            _fmt(row["gold_minus_sft"], row["gold_minus_sft_ci"], signed=True),
            _fmt(row["win_rate_vs_sft"], row["win_rate_vs_sft_ci"]),
            _fmt(row["reward"]),
            _fmt(row["lm_loss"]),
            f"≤ {kl}" if row.get("kl_is_bound") and kl != DASH else kl,
            *_cost_cells(row),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + _notes(summary) + [""] + pair_lines(summary)).rstrip("\n") + "\n"


def pair_lines(summary: Mapping[str, Any]) -> list[str]:
    """ablation.md's method-versus-method list: best first, each method's lead over every one ranked below it,
    and one sentence naming the differences whose interval excludes 0."""
    pairs = summary.get("pairs")
    if not pairs:  # an ablation.json from before issue 27
        return []
    level = f"{pairs['confidence']:.0%}"
    label = {row["method"]: row["model"] for row in summary["rows"]}
    lines = [f"## Which to pick: gold differences between the methods [paired {level} CI]", ""]
    if pairs["ranking"]:
        ranked = ", ".join(f"{label.get(r['method'], r['method'])} {r['gold']:.3f}" for r in pairs["ranking"])
        lines += [f"Ranked by gold: {ranked}.", ""]
    for pair in pairs["pairs"]:
        scope = "" if pair["prompts"] == summary["prompts"] else f" (first {pair['prompts']} prompts)"
        lo, hi = pair["ci"]
        lines.append(f"- {label[pair['a']]} − {label[pair['b']]}: {pair['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]{scope}")
    lines += ([""] if pairs["pairs"] else []) + [_pairs_verdict(pairs, label)]
    if pairs["pairs"] and pairs["without_gold"]:  # methods evaluated before eval kept gold per prompt
        missing = ",".join(pairs["without_gold"])
        lines.append(f"Not compared (no gold per prompt in eval_samples.jsonl): `--methods {missing}` evaluates again.")
    return lines + [""]


def _pairs_verdict(pairs: Mapping[str, Any], label: Mapping[str, str]) -> str:
    """One sentence: which differences exclude 0."""
    if not pairs["pairs"]:
        return "No method-versus-method intervals: no gold score per prompt (a gold judge is needed)."
    real = [f"{label[p['a']]} − {label[p['b']]}" for p in pairs["pairs"] if p["excludes_zero"]]
    if not real:
        return "No difference between two of them excludes 0: on these prompts they cannot be told apart."
    return f"Differences whose interval excludes 0: {'; '.join(real)}; the others cannot be told from noise."


def _notes(summary: Mapping[str, Any]) -> list[str]:
    judge = {"gold": "the gold judge", "reward_model": "the reward model (no gold judge)"}.get(
        summary["win_rate_judge"], DASH
    )
    methods = summary["methods"]
    notes = [
        f"- {summary['prompts']} held-out prompts, the same for every row; win rates judged by {judge}; intervals "
        "are bootstrap over prompts, paired where two models are compared (with sft above, with each other below).",
        "- Every method starts from the run's sft adapter and learns from the same labels, the rankings "
        f"{summary['rankings']} that trained the run's reward model: the PPO family through that RM, DPO directly.",
        "- Equal budget: the same number of policy optimizer steps for every trained method (PPO: iterations × "
        "epochs × rollout samples / mini-batch; DPO: its batch of ranked prompts chosen to give that many steps); "
        "samples trained on: PPO-family on-policy rollouts (prompts × samples per prompt), DPO the ranked sft "
        "responses it saw (prompts × K). DPO runs at PPO's policy learning rate unless dpo.train.learning_rate is set.",
    ]
    if "ppo_ptx" in methods:
        ptx = methods["ppo_ptx"]
        notes.append(f"- PPO-ptx: ppo.ptx.coef {ptx['ptx_coef']:g} on {ptx['ptx_path']}; PPO and RL rows: coef 0.")
    for name in ("dpo_pairs", "dpo_pl"):
        if name in methods:
            m = methods[name]
            notes.append(
                f"- {METHODS[name].label}: dpo.loss_type {m['loss_type']}, β {m['beta']:g}, learning rate "
                f"{m['learning_rate']:g}, {m['batch_size']} ranked prompts per step."
            )
    notes += [
        "- best-of-N samples N answers from sft and keeps the RM's favourite: its weights are sft's (same LM loss), "
        "its KL is the bound log N − (N−1)/N; it trains nothing (its cost is N samples per prompt at inference).",
        f"- LM loss: mean token NLL on {summary['lm_text'] or 'no held-out text (set eval.lm_text.path)'}; "
        "KL: mean over prompts of the summed per-token KL(model ‖ sft) on the model's own answers.",
        "- Train wall and peak RSS: the training phase alone, in the one ablation process (the base loaded once "
        "before; peak = the kernel's RSS high-water mark reset before each phase, so it includes the shared base "
        "and what the process already held). Compare them as ratios within one ablation run.",
        "- " + DASH + ": not measurable in this run (e.g. no gold judge off the demo task), or nothing trained.",
    ]
    return notes
