"""Build and save a tiny random-weight causal LM with a working tokenizer, entirely offline.

The tokenizer is a byte-level BPE trained in memory on a few sentences with `tokenizers`, so tests
exercise real text -> ids -> text round trips and chat templates without the Hub.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lora_rlhf.io import atomic_dir
from lora_rlhf.paths import default_cache_dir

TINY_ARCHITECTURES = ("llama", "qwen2", "gpt_neox", "gpt2")

_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
_CORPUS = [
    "sort the numbers 3 1 2 reverse the words hello world answer with yes or no",
    'the quick brown fox jumps over the lazy dog 0 1 2 3 4 5 6 7 8 9 + - * = , . ! ? : { } [ ] "',
    "user assistant system good bad great terrible please thanks count letters uppercase lowercase",
]


def tiny_tokenizer(vocab_size: int):
    """A byte-level BPE of `vocab_size` tokens trained in memory, with the chat template and special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", padding_side="left"
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


def _config(arch: str, vocab_size: int, hidden: int, layers: int, tokenizer):
    from transformers import AutoConfig

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
    )
    if arch in ("llama", "qwen2"):
        common["num_key_value_heads"] = 2
    return AutoConfig.for_model(arch, **common)


def make_tiny_model(
    folder: str | Path, arch: str = "llama", *, vocab_size: int = 384, hidden: int = 64, layers: int = 2, seed: int = 0
) -> Path:
    """Write a tiny random `arch` model and its tokenizer to `folder` (safetensors) and return the folder."""
    from transformers import AutoModelForCausalLM

    if arch not in TINY_ARCHITECTURES:
        raise ValueError(f"arch must be one of {TINY_ARCHITECTURES}, not {arch!r}")
    folder = Path(folder)
    tokenizer = tiny_tokenizer(vocab_size)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(arch, len(tokenizer), hidden, layers, tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_model_dir(arch: str = "llama", cache_dir: str | Path | None = None) -> Path:
    """A tiny random `arch` model cached on disk (built once, atomically), for `model.name_or_path: tiny:<arch>`."""
    target = Path(cache_dir or default_cache_dir()) / f"tiny-{arch}"
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
    with atomic_dir(target) as tmp:
        make_tiny_model(tmp, arch)
    return target
