"""Where rows come from: a local JSON / JSONL / Parquet file or a Hub dataset id, via `datasets.load_dataset`."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from lora_rlhf.errors import LoraRlhfError

_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclasses.dataclass
class DatasetSpec:
    """One dataset of a stage."""

    # Local .json / .jsonl / .parquet file, or a Hugging Face Hub dataset id.
    path: str = ""
    # Split to read (Hub datasets and local files alike; a local file's only split is "train").
    split: str = "train"
    # Hub dataset configuration name, if the dataset has several.
    name: str | None = None
    # Hub subfolder of data files (e.g. "harmless-base" in Anthropic/hh-rlhf).
    data_dir: str | None = None
    # Use at most this many rows (None: all), taken before the held-out split.
    max_rows: int | None = None

    def __post_init__(self) -> None:
        if self.max_rows is not None and self.max_rows < 1:
            raise LoraRlhfError(f"max_rows: {self.max_rows!r} must be a positive integer or null")

    def display(self) -> str:
        return self.path if self.split == "train" else f"{self.path}[{self.split}]"


def is_local(path: str) -> bool:
    return Path(os.path.expanduser(path)).suffix.lower() in _BUILDERS or os.path.exists(os.path.expanduser(path))


def load_rows(spec: DatasetSpec):
    """Load `spec` as a `datasets.Dataset` (no formatting yet); a one-line error if it cannot be read."""
    import datasets

    if not spec.path:
        raise LoraRlhfError("dataset path is empty: give a .json, .jsonl or .parquet file or a Hub dataset id")
    try:
        if is_local(spec.path):
            path = Path(os.path.expanduser(spec.path))
            if not path.is_file():
                raise LoraRlhfError(f"dataset file {spec.path!r} does not exist")
            builder = _BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise LoraRlhfError(f"dataset file {spec.path!r}: expected a .json, .jsonl or .parquet file")
            rows = datasets.load_dataset(builder, data_files={"train": str(path)}, split=spec.split)
        else:
            rows = datasets.load_dataset(spec.path, spec.name, data_dir=spec.data_dir, split=spec.split)
    except LoraRlhfError:
        raise
    except Exception as exc:  # datasets raises many types; the user needs one line naming the source
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LoraRlhfError(f"could not read dataset {spec.display()!r}: {first}") from exc
    if spec.max_rows is not None:
        rows = rows.select(range(min(spec.max_rows, len(rows))))
    return rows
