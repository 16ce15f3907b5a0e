"""Datasets: sources, the row formats of DESIGN.md, tokenization and batching."""

from lora_rlhf.data.sources import DatasetSpec, load_rows

__all__ = ["DatasetSpec", "load_rows"]
