"""`lora-rlhf export-reward`: the exported reward model scores as `forward.rewards`, loaded without lora_rlhf.

Tiny random llama, qwen2 and gpt2 bases; each reward role has a LoRA update that matters and a random head
with a bias of 0.7. GPT-2 ends in a LayerNorm with a bias, so the head's bias folds into it exactly; Llama and
Qwen2 end in an RMSNorm, so it is left out and recorded as `config.lora_rlhf_reward_offset`. A missing, wrong
or double-counted bias moves every score by 0.7 or more, far outside the tolerances below.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lora_rlhf.cli.main import main
from lora_rlhf.data.batching import pad_left, pad_right
from lora_rlhf.data.rankings import Ranking, encode_ranking
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.export import export_reward
from lora_rlhf.export.seq_cls import OFFSET_KEY
from lora_rlhf.export.tokenizer import NEW_PAD, set_reward_padding
from lora_rlhf.hub.reward_export_card import LOCAL_MODEL
from lora_rlhf.models import BaseModelConfig, LoraSettings, RoleStack, forward
from lora_rlhf.testing import make_tiny_model

from tiny_architectures import tiny_causal_lm

ARCHS = ("llama", "qwen2", "gpt2")
BIAS = 0.7
# Float32 export against float32 forward.rewards: the same arithmetic but for merged vs unmerged LoRA and the
# order of a few sums. Measured max |difference| at score scale 3-8: 1e-5 to 2e-5, 5e-5 for Llama left-padded
# without position_ids. (A bfloat16 export is off by up to 0.4 on these random weights: the dtype's rounding.)
ATOL = 2e-4
PAIRS = [
    ("sort the numbers 3 1 2", "1 2 3"),
    ("reverse the words hello world please", "world hello"),
    ("say yes", "yes or no, good thanks"),
]
_CODE_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def reward_run(base: Path, run: Path) -> RoleStack:
    """A run directory whose reward role has random LoRA B (B = 0 would do nothing) and head, bias BIAS."""
    stack = RoleStack.load(BaseModelConfig(str(base), quantization="none", device="cpu"))
    stack.add_role("reward", LoraSettings(r=4, dropout=0.0))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in stack.model.named_parameters():
            if ".lora_B.reward." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        head = stack.head("reward").linear
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator))
        head.bias.fill_(BIAS)
    stack.save_role("reward", run / "adapters" / "reward")
    # The run trained on NF4: the export must reload the checkpoint's float weights regardless.
    recipe = {"model": {"name_or_path": str(base), "quantization": "nf4", "device": "cpu"}}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    stack.model.eval()
    return stack


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[RoleStack, Path, Path]]:
    """{arch: (stack, base folder, export folder with peft_adapter/)}, exported in float32."""
    root = tmp_path_factory.mktemp("export-reward")
    found = {}
    for arch in ARCHS:
        base = make_tiny_model(root / arch / "base", arch)
        stack = reward_run(base, root / arch / "run")
        export_reward(root / arch / "run", root / arch / "out", dtype="float32", peft_adapter=True)
        found[arch] = (stack, base, root / arch / "out")
    return found


def rows(tokenizer) -> list[list[int]]:
    """PAIRS as lora_rlhf encodes rankings: the prompt through the chat template, the response, EOS."""
    encoded = [encode_ranking(Ranking(p, [r], [0]), tokenizer, 256) for p, r in PAIRS]
    return [e.prompt_ids + e.response_ids[0] for e in encoded]


def padded(ids: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    return (pad_left if side == "left" else pad_right)(ids, pad_id)


@torch.no_grad()
def stack_rewards(stack: RoleStack, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return forward.rewards(stack, "reward", ids, mask)


@torch.no_grad()
def scores(model, ids: torch.Tensor, mask: torch.Tensor, *, positions: bool = False) -> torch.Tensor:
    """(B,) the model's logits[:, 0] plus the recorded offset; `positions`: pass cumsum position ids."""
    extra = {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)} if positions else {}
    offset = getattr(model.config, OFFSET_KEY, 0.0)
    return model(input_ids=ids, attention_mask=mask, **extra).logits[:, 0] + offset


@pytest.mark.parametrize("arch", ARCHS)
def test_merged_export_scores_as_the_stack(exported, arch) -> None:
    stack, _, out = exported[arch]
    model = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.padding_side == "right" and tokenizer.pad_token_id == model.config.pad_token_id
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    info = json.loads((out / "lora_rlhf_export.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config  # exported from the float checkpoint, not the run's NF4 copy
    if arch == "gpt2":  # folded exactly: no offset to add
        assert info["bias_placed_in"] == "transformer.ln_f.bias" and config[OFFSET_KEY] == 0.0
    else:
        assert info["bias_placed_in"] == "dropped" and config[OFFSET_KEY] == pytest.approx(BIAS)
    ids = rows(tokenizer)
    expected = stack_rewards(stack, *padded(ids, tokenizer.pad_token_id, "right"))
    for side in ("right", "left"):
        batch = padded(ids, tokenizer.pad_token_id, side)
        torch.testing.assert_close(stack_rewards(stack, *batch), expected, rtol=0, atol=ATOL)
        torch.testing.assert_close(scores(model, *batch, positions=side == "left"), expected, rtol=0, atol=ATOL)
    if arch != "gpt2":  # rotary positions: a left-padded row's shift changes nothing
        torch.testing.assert_close(
            scores(model, *padded(ids, tokenizer.pad_token_id, "left")), expected, atol=ATOL, rtol=0
        )
    assert expected.abs().min() > 0.1 and (expected.max() - expected.min()) > 0.1  # the scores say something


@pytest.mark.parametrize("arch", ARCHS)
def test_peft_seq_cls_adapter_scores_as_the_stack(exported, arch) -> None:
    from peft import PeftModel

    stack, base, out = exported[arch]
    config = json.loads((out / "peft_adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "score" in config["modules_to_save"]
    tokenizer = AutoTokenizer.from_pretrained(out / "peft_adapter")
    bare = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=1, pad_token_id=tokenizer.pad_token_id, dtype=torch.float32
    )
    model = PeftModel.from_pretrained(bare, str(out / "peft_adapter")).eval()
    setattr(model.config, OFFSET_KEY, json.loads((out / "config.json").read_text())[OFFSET_KEY])
    ids = rows(tokenizer)
    expected = stack_rewards(stack, *padded(ids, tokenizer.pad_token_id, "right"))
    for side in ("right", "left"):
        batch = padded(ids, tokenizer.pad_token_id, side)
        torch.testing.assert_close(scores(model, *batch, positions=side == "left"), expected, rtol=0, atol=ATOL)
    with model.disable_adapter():  # the LoRA update is in play (the head stays: modules_to_save)
        assert (scores(model, *padded(ids, tokenizer.pad_token_id, "right")) - expected).abs().max() > 1e-2


@pytest.mark.parametrize("arch", ARCHS)
def test_text_classification_pipeline_scores_as_the_stack(exported, arch) -> None:
    from transformers import pipeline

    stack, _, out = exported[arch]
    tokenizer = AutoTokenizer.from_pretrained(out)
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             + r + tokenizer.eos_token for p, r in PAIRS]  # fmt: skip
    scorer = pipeline("text-classification", model=str(out), function_to_apply="none", device="cpu")
    piped = scorer(texts, add_special_tokens=False, batch_size=len(texts))  # one padded batch
    offset = getattr(scorer.model.config, OFFSET_KEY)
    got = torch.tensor([row["score"] + offset for row in piped])
    batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    assert batch["attention_mask"].min() == 0  # the batch is padded
    expected = stack_rewards(stack, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
    assert {row["label"] for row in piped} == {"reward"}


def test_grpo_trainer_takes_the_export_as_its_reward_model(exported, tmp_path) -> None:
    """TRL loads the folder by path (model and tokenizer), and its reward step gives the stack's scores."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    stack, base, out = exported["llama"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                             add_generation_prompt=True) for p, _ in PAIRS]  # fmt: skip
    completions = [r for _, r in PAIRS]
    args = GRPOConfig(
        output_dir=str(tmp_path / "grpo"),
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=4,
        use_cpu=True,
        bf16=False,
        report_to="none",
    )
    trainer = GRPOTrainer(
        model=str(base),
        reward_funcs=str(out),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=AutoTokenizer.from_pretrained(base),
    )
    inputs = [{"prompt": p, "completion": c} for p, c in zip(prompts, completions)]
    got = trainer._calculate_rewards(inputs, prompts, completions, [[] for _ in prompts])[:, 0]
    # TRL scores prompt + completion as text, without special tokens and without EOS, padded right.
    batch = tokenizer([p + c for p, c in zip(prompts, completions)], add_special_tokens=False, padding=True,
                      padding_side="right", return_tensors="pt")  # fmt: skip
    expected = stack_rewards(stack, batch["input_ids"], batch["attention_mask"])
    offset = json.loads((out / "config.json").read_text())[OFFSET_KEY]
    torch.testing.assert_close(got.float() + offset, expected, rtol=0, atol=ATOL)


def test_the_cards_code_scores_as_the_stack(exported) -> None:
    stack, _, out = exported["llama"]
    card = (out / "README.md").read_text()
    assert "GRPOTrainer" in card and "peft_adapter" in card and "lora_rlhf_reward_offset" in card
    assert "lora-rlhf export-reward" in (out.parent / "run" / "adapters" / "reward" / "README.md").read_text()
    code = _CODE_BLOCK.findall(card)[0]
    assert LOCAL_MODEL in code
    namespace: dict = {"__name__": "card"}
    exec(compile(code.replace(LOCAL_MODEL, f"MODEL = {str(out)!r}"), "README.md", "exec"), namespace)  # noqa: S102
    batch = namespace["batch"]
    expected = stack_rewards(stack, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(namespace["rewards"], expected, rtol=0, atol=ATOL)
    torch.testing.assert_close(torch.tensor(namespace["piped"]), expected, rtol=0, atol=ATOL)


def test_bias_modes(exported, tmp_path) -> None:
    """drop: exactly BIAS lower (so the fold above is what made GPT-2 exact); fold: refused on an RMSNorm base."""
    stack, _, _ = exported["gpt2"]
    run = exported["gpt2"][2].parent / "run"
    dropped = export_reward(run, tmp_path / "dropped", dtype="float32", bias="drop")
    assert dropped.bias.where == "dropped" and dropped.bias.offset == pytest.approx(BIAS)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "dropped", dtype=torch.float32).eval()
    ids, mask = padded(rows(stack.tokenizer), model.config.pad_token_id, "right")
    raw = scores(model, ids, mask) - dropped.bias.offset
    torch.testing.assert_close(raw, stack_rewards(stack, ids, mask) - BIAS, rtol=0, atol=ATOL)

    llama_run = exported["llama"][2].parent / "run"
    with pytest.raises(LoraRlhfError, match=r"LlamaForSequenceClassification.*bias 0\.7.*--bias drop"):
        export_reward(llama_run, tmp_path / "folded", bias="fold")
    assert not (tmp_path / "folded").exists()


def test_bad_inputs_are_one_line_errors(exported, tmp_path, capsys) -> None:
    run = exported["llama"][2].parent / "run"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert main(["export-reward", str(run), "-o", str(tmp_path / "full")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "full") in err and "not an empty folder" in err

    no_reward = tmp_path / "run-without-reward"
    shutil.copytree(run, no_reward)
    (no_reward / "adapters" / "reward").rename(no_reward / "adapters" / "sft")
    with pytest.raises(LoraRlhfError, match=rf"run {re.escape(str(no_reward))} has no 'reward' adapter.*sft"):
        export_reward(no_reward, tmp_path / "a")

    cohere = tmp_path / "cohere"
    tiny_causal_lm("cohere").save_pretrained(cohere)
    with pytest.raises(LoraRlhfError, match="architecture 'cohere' has no ForSequenceClassification"):
        export_reward(run / "adapters" / "reward", tmp_path / "b", base=str(cohere))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_interrupted_export_leaves_nothing(exported, tmp_path, monkeypatch) -> None:
    from transformers import PreTrainedModel

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    # The PEFT adapter is written first, then the merged model's save fails: a half-written folder is discarded.
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export_reward(exported["qwen2"][2].parent / "run", tmp_path / "out", peft_adapter=True)
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary folder


def test_cli_exports_and_reports(exported, tmp_path, capsys) -> None:
    run = exported["gpt2"][2].parent / "run"
    assert main(["export-reward", str(run), "-o", str(tmp_path / "out"), "--dtype", "bfloat16"]) == 0
    assert "GPT2ForSequenceClassification" in capsys.readouterr().out
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert model.dtype == torch.bfloat16 and not (tmp_path / "out" / "peft_adapter").exists()


def test_pad_token_is_never_eos(exported) -> None:
    tokenizer = AutoTokenizer.from_pretrained(exported["llama"][1])
    tokenizer.pad_token = tokenizer.eos_token  # what lora_rlhf's loader does for a tokenizer without one
    assert not set_reward_padding(tokenizer)
    assert tokenizer.pad_token == tokenizer.bos_token and tokenizer.padding_side == "right"
    tokenizer.pad_token, tokenizer.bos_token = tokenizer.eos_token, None  # nothing but EOS left to pad with
    assert set_reward_padding(tokenizer) and tokenizer.pad_token == NEW_PAD
    assert tokenizer.pad_token_id not in (tokenizer.eos_token_id, None)
