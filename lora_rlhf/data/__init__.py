"""Datasets: sources, the row formats of docs/design.md, tokenization and batching."""

from lora_rlhf.data.demonstrations import DemoText, load_demonstrations, load_sft_examples
from lora_rlhf.data.rankings import load_ranking_examples
from lora_rlhf.data.sources import DatasetSpec, load_rows

__all__ = ["DatasetSpec", "DemoText", "load_demonstrations", "load_ranking_examples", "load_rows", "load_sft_examples"]
