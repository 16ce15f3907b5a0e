"""Where things live on disk: the layout of a run directory and the user's cache (issue 26: one owner).

The run layout is the contract of docs/design.md ("Contract: what a run writes"):

    OUTPUT_DIR/recipe.yaml          the fully resolved recipe
    OUTPUT_DIR/adapters/<role>/     plain PEFT adapter folders (+ head.safetensors, README.md)
    OUTPUT_DIR/metrics/<stage>.jsonl
    OUTPUT_DIR/checkpoints/<stage>/
    OUTPUT_DIR/data/                data the embedded demo generated
    OUTPUT_DIR/eval.json, eval_samples.jsonl, report.md, plots/, ifeval/<model>.jsonl
    OUTPUT_DIR/trackers/<stage>/   what a file-keeping tracker (TensorBoard) writes
    OUTPUT_DIR/.lock                held by the command writing the run (lora_rlhf.pipeline.lock)

Every stage, eval, inference, the hub and the server name these paths through `RunLayout`; the rules for
re-running into a directory build on it (lora_rlhf.pipeline.run_dir.RunDir). Part of the core: imports nothing
of ours.
"""

from __future__ import annotations

import os
from pathlib import Path

RECIPE_FILE = "recipe.yaml"
ADAPTERS_DIR = "adapters"
METRICS_DIR = "metrics"
CHECKPOINTS_DIR = "checkpoints"
DATA_DIR = "data"
EVAL_FILE = "eval.json"
EVAL_SAMPLES_FILE = "eval_samples.jsonl"
REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
IFEVAL_RESPONSES_DIR = "ifeval"
LOCK_FILE = ".lock"
TRACKERS_DIR = "trackers"  # files of the trackers that keep them (TensorBoard), one folder per stage
# What a run publishes beside its adapters (lora_rlhf.hub.push).
PUBLISHED_FILES = (EVAL_FILE, RECIPE_FILE, REPORT_FILE)


class RunLayout:
    """The paths of one run directory; nothing here touches the disk but the `is_run` check."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()

    @property
    def recipe_path(self) -> Path:
        return self.path / RECIPE_FILE

    @property
    def adapters(self) -> Path:
        return self.path / ADAPTERS_DIR

    def adapter(self, role: str) -> Path:
        return self.adapters / role

    def checkpoints(self, stage: str) -> Path:
        return self.path / CHECKPOINTS_DIR / stage

    def metrics(self, stage: str) -> Path:
        return self.path / METRICS_DIR / f"{stage}.jsonl"

    @property
    def data_dir(self) -> Path:
        return self.path / DATA_DIR

    def data(self, name: str) -> Path:
        return self.data_dir / name

    @property
    def eval_path(self) -> Path:
        return self.path / EVAL_FILE

    @property
    def eval_samples(self) -> Path:
        return self.path / EVAL_SAMPLES_FILE

    @property
    def report(self) -> Path:
        return self.path / REPORT_FILE

    @property
    def plots(self) -> Path:
        return self.path / PLOTS_DIR

    def plot(self, name: str) -> Path:
        return self.plots / f"{name}.png"

    def ifeval_responses(self, model: str) -> Path:
        """The answers of `model` to IFEval, as Google's evaluator reads them."""
        return self.path / self.ifeval_responses_name(model)

    @staticmethod
    def ifeval_responses_name(model: str) -> str:
        """`ifeval_responses(model)` relative to the run directory (as eval.json records it)."""
        return f"{IFEVAL_RESPONSES_DIR}/{model}.jsonl"

    @property
    def trackers(self) -> Path:
        return self.path / TRACKERS_DIR

    @property
    def lock(self) -> Path:
        return self.path / LOCK_FILE

    def is_run(self) -> bool:
        """Whether the directory looks like a run: it has a recipe or an adapters/ folder."""
        return self.recipe_path.is_file() or self.adapters.is_dir()


def default_cache_dir() -> Path:
    """`$LORA_RLHF_CACHE`, else `$XDG_CACHE_HOME/lora_rlhf`, else `~/.cache/lora_rlhf`."""
    if os.environ.get("LORA_RLHF_CACHE"):
        return Path(os.environ["LORA_RLHF_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "lora_rlhf"
