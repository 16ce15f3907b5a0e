"""The K-way reward loss against the same rankings flattened into independent pairs (issue 28).

    python scripts/kway_vs_pairs.py RUN_DIR [--prompts 48] [--ks 8,4] [--views kway,pairs] [--out DIR] [--seed 0]

RUN_DIR is a demo run whose sft adapter and rankings exist (`lora-rlhf sft` then `lora-rlhf rm`, which writes
RUN_DIR/data/rankings.jsonl and eval_rankings.jsonl before it trains). For each K in --ks, the first --prompts
rankings, cut to their first K responses (re-ranked among themselves), train a reward model from the same sft
adapter in two ways:

- kway: each ranking is ONE batch element, its K responses scored once and all C(K,2) pairs formed from those
  scores (InstructGPT §3.5, rm/loss.py), rm.train.batch_size rankings per step;
- pairs: the same rankings written as C(K,2) {prompt, chosen, rejected} rows (ties skipped as the rm's tie policy
  does, `flatten_ranking`), shuffled: every pair an independent example, as TRL's RewardTrainer sees them. Batch:
  batch_size x K/2 pairs, so a step encodes as many responses as a kway step (like-for-like memory per step);
  it then takes K - 1 times the steps to see every pair once;
- pairs_same_steps (optional, --views): the same pairs and micro-batches, gradients accumulated so the run takes as
  many optimizer steps as kway (each step then holds about as many pairs as batch_size rankings do).

Both: the recipe's rm settings (learning rate, schedule, one epoch, max_length, prompts encoded once), no bias
centring (accuracy does not depend on it), a checkpoint only at the end. Each variant trains in a fresh process
(spawned), so its memory is its own: the resident set sampled every 5 ms while it trains (peak, and what training
added to the loaded model), and the process's getrusage high-water; wall time is that of training alone. Both
are judged on RUN_DIR/data/eval_rankings.jsonl (held-out prompts, all their responses): pairwise accuracy against
the gold judge's order (pairs of equal gold score left out) and against the labeler's ranks, with bootstrap 95%
intervals over prompts, and the paired kway - pairs difference. Writes OUT/results.json and OUT/table.md
(default OUT: RUN_DIR/kway_vs_pairs).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import random
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from lora_rlhf.data.rankings import Ranking, Ties, flatten_ranking, parse_ranking

logger = logging.getLogger("kway_vs_pairs")
VIEWS = ("kway", "pairs", "pairs_same_steps")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (no usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"kway_vs_pairs: error: {message}\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="kway_vs_pairs", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="demo run with adapters/sft and data/rankings.jsonl")
    parser.add_argument("--prompts", type=int, default=48, help="ranked training prompts used (the first N; 0: all)")
    parser.add_argument("--ks", default="8,4", help="comma-separated K values (responses kept per ranking)")
    parser.add_argument("--views", default="kway,pairs", help=f"comma-separated, kway first, of {', '.join(VIEWS)}")
    parser.add_argument("--out", help="output directory (default: RUN_DIR/kway_vs_pairs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the flattened pairs' shuffle")
    args = parser.parse_args(argv)
    try:
        args.ks = [int(k) for k in args.ks.split(",")]
    except ValueError:
        parser.error(f"--ks: {args.ks!r} must be comma-separated integers, e.g. 8,4")
    if any(k < 2 for k in args.ks) or len(set(args.ks)) != len(args.ks):
        parser.error(f"--ks: {args.ks} must be distinct integers >= 2 (K responses to rank)")
    args.views = args.views.split(",")
    if args.views[0] != "kway" or not set(args.views) <= set(VIEWS) or len(set(args.views)) != len(args.views):
        parser.error(f"--views: {','.join(args.views)!r} must start with kway and name distinct views of {VIEWS}")
    if args.prompts < 0:
        parser.error(f"--prompts: {args.prompts} must be >= 0 (0: all)")
    return args


def cut_ranking(ranking: Ranking, k: int) -> Ranking | None:
    """The first `k` responses, re-ranked among themselves (0 = best, ties kept); None if no untied pair is left."""
    ranks = ranking.ranks[:k]
    dense = {r: i for i, r in enumerate(sorted(set(ranks)))}
    if len(dense) < 2:
        return None
    return Ranking(ranking.prompt, ranking.responses[:k], [dense[r] for r in ranks])


def variant_rows(rows: Sequence[Mapping[str, Any]], k: int, ties: Ties, seed: int) -> dict[str, list[dict]]:
    """{"kway": ranking rows cut to K, "pairs": the same rankings' untied pairs, shuffled}."""
    rankings = [cut_ranking(parse_ranking(row, ties), k) for row in rows]
    kept = [r for r in rankings if r is not None]
    pairs = [pair for r in kept for pair in flatten_ranking(r)]
    random.Random(seed).shuffle(pairs)
    return {"kway": [{"prompt": r.prompt, "responses": r.responses, "ranks": r.ranks} for r in kept], "pairs": pairs}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from lora_rlhf.errors import LoraRlhfError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%X")
    try:
        summary = run_comparison(args)
    except LoraRlhfError as exc:
        print(f"kway_vs_pairs: error: {exc}", file=sys.stderr)
        return 2
    print(render_table(summary))
    return 0


def load_source(run_dir: str):
    """RUN_DIR's recipe (demo data paths filled in) and RunDir; a one-line error naming what is missing."""
    from lora_rlhf.config.loader import build
    from lora_rlhf.config.recipe import RecipeConfig
    from lora_rlhf.errors import LoraRlhfError
    from lora_rlhf.pipeline import demo_data
    from lora_rlhf.pipeline.run_dir import RunDir

    run = RunDir(run_dir)
    saved = run.read_recipe()
    if saved is None:
        raise LoraRlhfError(f"{run.path} is not a run directory: {run.recipe_path} is missing")
    recipe = build(RecipeConfig, saved)
    if not recipe.demo.enabled:
        raise LoraRlhfError(f"{run.path}: its recipe is not the demo's (demo.enabled: false); the gold judge is needed")
    demo_data.fill_paths(recipe, run)
    for path, hint in (
        (run.adapter("sft"), "lora-rlhf sft"),
        (Path(recipe.rm.data.path), "lora-rlhf rm (it writes the rankings first)"),
        (Path(recipe.eval.rankings.path), "lora-rlhf rm (it writes the rankings first)"),
    ):
        if not path.exists():
            raise LoraRlhfError(f"{path} is missing: run `{hint} --output-dir {run.path}` first")
    return recipe, run


def run_comparison(args: argparse.Namespace) -> dict[str, Any]:
    import dataclasses

    from lora_rlhf.data.sources import DatasetSpec
    from lora_rlhf.errors import LoraRlhfError

    recipe, run = load_source(args.run_dir)
    out = Path(args.out) if args.out else run.path / "kway_vs_pairs"
    rows = read_jsonl(Path(recipe.rm.data.path))
    rows = rows[: args.prompts] if args.prompts else rows
    k_data = max(len(r["responses"]) for r in rows)
    if max(args.ks) > k_data:
        raise LoraRlhfError(f"--ks: {max(args.ks)} is more than the {k_data} responses the rankings hold")
    results: list[dict[str, Any]] = []
    for k in args.ks:
        data = variant_rows(rows, k, recipe.rm.ties, args.seed)
        for view in args.views:  # alternated: kway, pairs, kway, pairs
            rows_of_view = data["kway" if view == "kway" else "pairs"]
            batch, accumulation = batching(view, k, recipe.rm.train.batch_size, len(rows_of_view), len(data["kway"]))
            train = dataclasses.replace(
                recipe.rm.train,
                batch_size=batch,
                gradient_accumulation=accumulation,
                save_steps=10**9,
                eval_steps=10**9,
            )
            rm = dataclasses.replace(
                recipe.rm,
                data=DatasetSpec(str(write_jsonl(out / "data" / f"k{k}_{view}.jsonl", rows_of_view).resolve())),
                eval_data=None,
                eval_fraction=0.0,
                demonstrations=DatasetSpec(),  # no bias centring: accuracy is shift-invariant
                train=train,
            )
            variant = dataclasses.replace(recipe, rm=rm)
            job = {"recipe": variant, "run_dir": str(run.path), "out": str(out / f"k{k}_{view}")}
            logger.info("K = %d, %s: %d rows, batch %d x %d", k, view, len(rows_of_view), batch, accumulation)
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                result = pool.submit(train_variant, job).result()
            results.append(
                {"k": k, "view": view, "batch_size": batch, "accumulation": accumulation, "rows": len(rows_of_view)}
                | result
            )
            logger.info("K = %d, %s: %s", k, view, _brief(results[-1]))
    summary = summarize(results, recipe, args, k_data, len(rows))
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "table.md").write_text(render_table(summary) + "\n")
    return summary


class RssPeak:
    """The resident set sampled every 5 ms in a thread while the block runs: before it, and its peak."""

    def __init__(self) -> None:
        self.before = self.peak = 0.0
        self._stop = threading.Event()

    @staticmethod
    def now_mib() -> float:
        import os

        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.now_mib())

    def __enter__(self) -> RssPeak:
        self.before = self.peak = self.now_mib()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now_mib())


def batching(view: str, k: int, batch_size: int, rows: int, rankings: int) -> tuple[int, int]:
    """(micro-batch, gradient accumulation) of a view: kway takes the recipe's batch of rankings; the pair views
    batch_size x K/2 pairs, as many responses per forward as a kway batch; pairs_same_steps accumulates them so
    its optimizer steps match kway's."""
    if view == "kway":
        return batch_size, 1
    pairs = batch_size * max(1, k // 2)
    if view == "pairs":
        return pairs, 1
    return pairs, max(1, round(-(-rows // pairs) / -(-rankings // batch_size)))


def train_variant(job: Mapping[str, Any]) -> dict[str, Any]:
    """In a fresh process: the sft adapter -> reward role on the variant's data; time, peak RSS, held-out outcomes."""
    import resource

    from lora_rlhf.data.rankings import load_ranking_examples
    from lora_rlhf.eval.rm_accuracy import gold_orders, load_eval_rankings, pair_outcomes, score_rankings
    from lora_rlhf.pipeline import demo_data
    from lora_rlhf.pipeline.run_dir import RunDir
    from lora_rlhf.pipeline.runner import load_stack
    from lora_rlhf.rm.trainer import train_reward_model

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%X")
    recipe, run = job["recipe"], RunDir(job["run_dir"])
    rm = recipe.rm

    def peak_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

    stack = load_stack(recipe)
    stack.load_role("sft", run.adapter("sft"))
    examples, _ = load_ranking_examples(rm.data, stack.tokenizer, rm.max_length, ties=rm.ties, on_bad_row=rm.on_bad_row)
    with RssPeak() as rss:
        start, cpu_start = time.perf_counter(), time.process_time()
        summary = train_reward_model(stack, rm, Path(job["out"]))
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    process_peak = peak_mib()
    held, _ = load_eval_rankings(recipe.eval, stack.tokenizer)
    scored = score_rankings(stack, held, recipe.eval.batch_size)
    gold = gold_orders(scored, demo_data.gold_fn(recipe, run))
    micro = -(-len(examples) // rm.train.batch_size)
    steps = max(1, micro // rm.train.gradient_accumulation) * rm.train.epochs  # fit's count
    return {
        "examples": len(examples),
        "pairs": sum(_untied_pairs(e.ranks) for e in examples),
        "steps": steps,
        "responses_encoded": sum(len(e.response_ids) for e in examples) * rm.train.epochs,
        "tokens_encoded": sum(_tokens(e, rm.share_prompts) for e in examples) * rm.train.epochs,
        "train_seconds": seconds,
        "train_cpu_seconds": cpu_seconds,  # user + system of this process: less moved by a shared machine's load
        "train_loss": summary["train_loss"],
        "rss_before_mib": rss.before,  # the model and the sft adapter loaded
        "peak_rss_mib": rss.peak,  # sampled every 5 ms while training
        "process_maxrss_mib": process_peak,  # getrusage high-water of the whole process (the load included)
        "labels": [pair_outcomes(s.ranking.ranks, s.scores, higher_is_better=False) for s in scored],
        "gold": [pair_outcomes(g, s.scores, higher_is_better=True) for g, s in zip(gold, scored)],
    }


def _untied_pairs(ranks: Sequence[int]) -> int:
    return sum(a < b for a in ranks for b in ranks)


def _tokens(example, share_prompts: bool) -> int:
    """Tokens one forward pass encodes for the example: its prompt once (shared) or once per response."""
    responses = sum(len(r) for r in example.response_ids)
    return len(example.prompt_ids) * (1 if share_prompts else len(example.response_ids)) + responses


def _brief(result: Mapping[str, Any]) -> str:
    return (
        f"{result['steps']} steps, {result['train_seconds']:.1f} s, peak RSS {result['peak_rss_mib']:.0f} MiB, "
        f"train loss {result['train_loss']:.4f}"
    )


def summarize(
    results: Sequence[Mapping[str, Any]], recipe, args: argparse.Namespace, k_data: int, prompts: int
) -> dict[str, Any]:
    """Accuracies with cluster-bootstrap intervals over held-out prompts, and kway - pairs per K (paired)."""
    from lora_rlhf.eval import stats
    from lora_rlhf.eval.scoring import bootstrap_kwargs

    boot = bootstrap_kwargs(recipe.eval)
    rows = []
    for r in results:
        row = {key: value for key, value in r.items() if key not in ("labels", "gold")}
        for against in ("gold", "labels"):
            accuracy, interval = stats.cluster_accuracy_ci(r[against], **boot)
            row[f"accuracy_{against}"], row[f"accuracy_{against}_ci"] = accuracy, list(interval)
            row[f"eval_pairs_{against}"] = sum(len(o) for o in r[against])
        rows.append(row)
    differences: list[dict[str, Any]] = []
    for k in args.ks:
        a = next(r for r in results if r["k"] == k and r["view"] == "kway")
        for b in (r for r in results if r["k"] == k and r["view"] != "kway"):
            difference: dict[str, Any] = {"k": k, "view": b["view"]}
            for against in ("gold", "labels"):
                # Same held-out pairs in the same order: per-pair differences, resampled by prompt.
                diffs = [[x - y for x, y in zip(pa, pb)] for pa, pb in zip(a[against], b[against])]
                value, interval = stats.cluster_accuracy_ci(diffs, **boot)
                difference[against] = {"kway_minus_view": value, "ci": list(interval)}
            difference["time_ratio_view_over_kway"] = b["train_seconds"] / a["train_seconds"]
            difference["cpu_ratio_view_over_kway"] = b["train_cpu_seconds"] / a["train_cpu_seconds"]
            differences.append(difference)
    return {
        "run_dir": str(Path(args.run_dir).resolve()),
        "training_prompts": prompts,
        "k_in_data": k_data,
        "rm": {
            "learning_rate": recipe.rm.train.learning_rate,
            "head_learning_rate": recipe.rm.resolved_head_learning_rate,
            "epochs": recipe.rm.train.epochs,
            "scheduler": recipe.rm.train.scheduler,
            "batch_size_rankings": recipe.rm.train.batch_size,
            "max_length": recipe.rm.max_length,
            "share_prompts": recipe.rm.share_prompts,
        },
        "eval_rankings": recipe.eval.rankings.path,
        "seed": args.seed,
        "views": args.views,
        "variants": rows,
        "differences": differences,
    }


def render_table(summary: Mapping[str, Any]) -> str:
    def acc(row: Mapping[str, Any], against: str) -> str:
        lo, hi = row[f"accuracy_{against}_ci"]
        return f"{row[f'accuracy_{against}']:.3f} [{lo:.3f}, {hi:.3f}]"

    lines = [
        "| K | loss view | batch | optimizer steps | responses encoded | tokens encoded | train time (s) | "
        "CPU time (s) | peak RSS (MiB) | RSS added (MiB) | held-out acc. vs gold [95% CI] | vs labeler [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["variants"]:
        unit = "rankings" if row["view"] == "kway" else "pairs"
        unit += f" x {row['accumulation']}" if row["accumulation"] > 1 else ""
        lines.append(
            f"| {row['k']} | {row['view']} | {row['batch_size']} {unit} | {row['steps']} | "
            f"{row['responses_encoded']} | {row['tokens_encoded']} | {row['train_seconds']:.0f} | "
            f"{row.get('train_cpu_seconds', float('nan')):.0f} | "
            f"{row['peak_rss_mib']:.0f} | {row['peak_rss_mib'] - row['rss_before_mib']:.0f} | "
            f"{acc(row, 'gold')} | {acc(row, 'labels')} |"
        )
    lines += [
        "",
        "| K | kway − view | gold acc. [95% CI] | labeler acc. [95% CI] | time view / kway | CPU view / kway |",
    ]
    lines.append("|---|---|---|---|---|---|")
    for d in summary["differences"]:
        cell = [
            f"{d[a]['kway_minus_view']:+.3f} [{d[a]['ci'][0]:+.3f}, {d[a]['ci'][1]:+.3f}]" for a in ("gold", "labels")
        ]
        lines.append(
            f"| {d['k']} | {d['view']} | {cell[0]} | {cell[1]} | {d['time_ratio_view_over_kway']:.2f} | "
            f"{d['cpu_ratio_view_over_kway']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
