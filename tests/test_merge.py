"""`lora-rlhf merge`: the merged standalone model reproduces adapter-on-base within the stated tolerance."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from lora_rlhf import LoraRlhfError
from lora_rlhf.cli.main import main
from lora_rlhf.inference.merge import TOLERANCE, merge_adapter, merge_difference
from lora_rlhf.testing.adapters import make_adapters, make_run_dir

TEXTS = ["sort the numbers 3 1 2", "hello world, please reverse the words"]


@pytest.fixture(scope="module")
def adapter(tiny_llama, tmp_path_factory):
    return make_adapters(tiny_llama, tmp_path_factory.mktemp("merge-adapters"), ["policy"])["policy"]


@torch.no_grad()
def logits(model, tokenizer, text):
    return model(**tokenizer(text, return_tensors="pt")).logits.float()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_merged_matches_adapter_on_base(tiny_llama, adapter, tmp_path, dtype):
    out = merge_adapter(adapter, tmp_path / "merged", dtype=dtype)
    assert AutoModelForCausalLM.from_pretrained(out).dtype == getattr(torch, dtype)
    # Plain transformers, no PEFT; computed in float32 so the merged (rounded) weights are what is compared.
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    tokenizer = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, str(adapter)).eval()
    worst = max((logits(reference, tokenizer, t) - logits(merged, tokenizer, t)).abs().max().item() for t in TEXTS)
    scale = max(1.0, max(logits(reference, tokenizer, t).abs().max().item() for t in TEXTS))
    assert worst / scale <= TOLERANCE[dtype], worst
    check = merge_difference(out, adapter, TEXTS)
    assert check.within(dtype) and check.max_abs_diff == pytest.approx(worst, rel=1e-3, abs=1e-5)
    # The adapter changes the model well beyond the tolerance, so the comparison above has teeth.
    bare = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    change = max((logits(bare, tokenizer, t) - logits(reference, tokenizer, t)).abs().max().item() for t in TEXTS)
    assert change / scale > 10 * TOLERANCE[dtype]
    if dtype == "float32":  # and greedy decoding gives the same tokens
        ids = tokenizer(TEXTS[0], return_tensors="pt")
        same = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert torch.equal(reference.generate(**ids, **same), merged.generate(**ids, **same))


def test_merged_folder_is_standalone(adapter, tmp_path):
    out = merge_adapter(adapter, tmp_path / "merged", dtype="bfloat16")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "lora_rlhf_merge.json"} <= names
    assert not {"adapter_config.json", "adapter_model.safetensors"} & names
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        assert {handle.get_slice(k).get_dtype() for k in handle.keys()} == {"BF16"}
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    assert "quantization_config" not in config


def test_merge_replaces_output_atomically_and_fails_cleanly(adapter, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(LoraRlhfError, match="could not load base model"):
        merge_adapter(adapter, out, base=str(tmp_path / "no-such-model"))
    assert (out / "keep.txt").read_text() == "old"
    with pytest.raises(LoraRlhfError, match="dtype"):
        merge_adapter(adapter, out, dtype="int4")  # type: ignore[arg-type]


def test_cli_merges_a_runs_role_with_verification(tiny_llama, tmp_path, capsys):
    run = make_run_dir(tiny_llama, tmp_path / "run", ("sft", "policy"))
    code = main(
        [
            "merge",
            "--run",
            str(run),
            "--role",
            "policy",
            "--output",
            str(tmp_path / "m"),
            "--dtype",
            "float32",
            "--verify",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "within the float32 tolerance" in out
    assert main(["merge", "--run", str(run), "--role", "nope", "--output", str(tmp_path / "n")]) == 2
    assert "no 'nope' adapter" in capsys.readouterr().err
