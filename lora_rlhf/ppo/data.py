"""PPO's two data streams: prompts to roll out on, and PPO-ptx's language-modelling text.

Both are read in a fixed order per (seed, epoch) from a position counter, so a resumed run sees exactly
the batches the interrupted one would have seen.
"""

from __future__ import annotations

import torch

from lora_rlhf.data.chat import render_prompt
from lora_rlhf.data.demonstrations import SFTExample, encode_demonstration, parse_demonstration
from lora_rlhf.data.prompts import parse_prompt, prompt_text
from lora_rlhf.data.rows import BadRow, OnBadRow, RowReport, parse_rows, text_field
from lora_rlhf.data.sources import DatasetSpec, load_rows
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.ppo.rollout import EncodedPrompt
from lora_rlhf.sft.loss import collate_sft
from lora_rlhf.train.loop import epoch_order


def load_ppo_prompts(
    spec: DatasetSpec, tokenizer, max_prompt_length: int, on_bad_row: OnBadRow
) -> tuple[list[EncodedPrompt], RowReport]:
    """Render every prompt with the chat template and tokenize it; a prompt over the limit is a bad row."""

    def encode(row) -> EncodedPrompt:
        prompt = parse_prompt(row)
        ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False).input_ids
        if len(ids) > max_prompt_length:
            raise BadRow(
                f"prompt longer than max_prompt_length ({len(ids)} tokens, max_prompt_length {max_prompt_length})"
            )
        return EncodedPrompt(ids, prompt_text(prompt))

    if not spec.path:
        raise LoraRlhfError(
            "ppo.prompts.path is empty: give a .json, .jsonl or .parquet file "
            "or a Hub dataset id of {prompt} or {messages} rows"
        )
    prompts, report = parse_rows(load_rows(spec), encode, spec.display(), on_bad_row)
    if not prompts:
        raise LoraRlhfError(f"ppo.prompts: {spec.display()} holds no usable prompt")
    return prompts, report


class Cycler:
    """Endless batches from a list, reshuffled every pass; `position` (items consumed) is the resume state."""

    def __init__(self, items: list, seed: int, position: int = 0) -> None:
        if not items:
            raise ValueError("Cycler needs at least one item")
        self.items, self.seed, self.position = items, seed, position

    def next(self, count: int) -> list:
        batch = []
        while len(batch) < count:
            epoch, offset = divmod(self.position, len(self.items))
            order = epoch_order(len(self.items), self.seed, epoch)
            take = min(count - len(batch), len(self.items) - offset)
            batch += [self.items[i] for i in order[offset : offset + take]]
            self.position += take
        return batch


def encode_ptx_row(row, tokenizer, max_length: int) -> SFTExample:
    """A {"text"} row is pretraining-style text (loss on every token, no chat template, as in the paper's
    pretraining mix); {prompt, completion} or {messages} rows are demonstrations (loss on the completion)."""
    if row.get("text") is not None:
        ids = tokenizer(text_field(row, "text"), add_special_tokens=True).input_ids
        if len(ids) < 2:
            raise BadRow("field 'text' has fewer than 2 tokens: nothing to predict")
        return SFTExample(ids[:max_length], ids[:max_length], len(ids) > max_length)
    return encode_demonstration(parse_demonstration(row), tokenizer, max_length)


def load_ptx_examples(
    spec: DatasetSpec, tokenizer, max_length: int, on_bad_row: OnBadRow
) -> tuple[list[SFTExample], RowReport]:
    """Every ptx row of `spec`: {"text"} (pretraining-style), {prompt, completion} or {messages}."""
    examples, report = parse_rows(
        load_rows(spec), lambda row: encode_ptx_row(row, tokenizer, max_length), spec.display(), on_bad_row
    )
    report.truncated = sum(e.truncated for e in examples)
    return examples, report


class PtxStream:
    """PPO-ptx batches (InstructGPT eq. 2): pretraining-style text (every token) or demonstrations
    (completion tokens), `batch_size` examples at a time in a reshuffled order (`cycler.position` resumes it).
    """

    def __init__(self, examples: list[SFTExample], pad_id: int, batch_size: int, seed: int) -> None:
        self.cycler = Cycler(examples, seed + 1)
        self.batch_size = batch_size
        self.pad_id = pad_id

    @classmethod
    def load(
        cls, spec: DatasetSpec, tokenizer, max_length: int, batch_size: int, seed: int, on_bad_row: OnBadRow
    ) -> PtxStream:
        """The stream of `spec`'s rows (`load_ptx_examples`)."""
        examples, report = load_ptx_examples(spec, tokenizer, max_length, on_bad_row)
        report.log()
        if not examples:
            raise LoraRlhfError(f"ppo.ptx: {spec.display()} holds no usable example")
        return cls(examples, tokenizer.pad_token_id, batch_size, seed)

    def next(self) -> dict[str, torch.Tensor]:
        examples: list[SFTExample] = self.cycler.next(self.batch_size)
        return collate_sft(examples, self.pad_id)
