"""The SFT stage on a tiny random model: outputs, frozen roles, learning, exact resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lora_rlhf.data.sources import DatasetSpec
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.metrics import read_metrics
from lora_rlhf.models import forward
from lora_rlhf.models.base import BaseModelConfig
from lora_rlhf.models.lora import LoraSettings
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.sft.config import SFTConfig
from lora_rlhf.sft.trainer import train_sft
from lora_rlhf.train.config import OptimConfig

DEMOS = [
    {"prompt": "sort the numbers 3 1 2", "completion": "1 2 3"},
    {"prompt": "reverse the words hello world", "completion": "world hello"},
    {"prompt": "answer with yes or no", "completion": "yes"},
    {"messages": [{"role": "user", "content": "count letters"}, {"role": "assistant", "content": "five"}]},
] * 2


def snapshot(stack: RoleStack, role: str | None = None) -> dict[str, torch.Tensor]:
    """Copies of the base's weights (role=None) or of one role's adapter and head tensors."""
    if role is None:  # names as in the plain model, before PEFT wraps a layer's weight as base_layer
        return {
            n.replace("base_layer.", ""): p.detach().clone()
            for n, p in stack.base_model.named_parameters()
            if "lora_" not in n
        }
    return {str(i): p.detach().clone() for i, p in enumerate(stack.role_parameters(role))}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def sft_config(path: Path, **train) -> SFTConfig:
    optim = dict(
        learning_rate=5e-3,
        batch_size=2,
        max_steps=4,
        logging_steps=1,
        eval_steps=2,
        save_steps=2,
        warmup_ratio=0.0,
        scheduler="linear",
    )
    optim.update(train)
    return SFTConfig(
        data=DatasetSpec(str(path)),
        eval_fraction=0.25,
        max_length=64,
        train=OptimConfig(**optim),
        lora=LoraSettings(r=4, alpha=8, dropout=0.1),
    )


@pytest.fixture()
def demos(tmp_path) -> Path:
    path = tmp_path / "demos.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in DEMOS))
    return path


def load_stack(folder: str) -> RoleStack:
    return RoleStack.load(BaseModelConfig(name_or_path=folder))


def test_sft_trains_only_its_adapter_and_writes_the_run_files(tiny_llama, demos, tmp_path):
    stack = load_stack(tiny_llama)
    stack.add_role("reward", LoraSettings(r=4))
    torch.nn.init.normal_(stack.role_parameters("reward")[1])  # a non-zero B, so "unchanged" means something
    base, reward = snapshot(stack), snapshot(stack, "reward")
    out = tmp_path / "run"
    summary = train_sft(stack, sft_config(demos, max_steps=8), out)
    assert same(snapshot(stack), base) and same(snapshot(stack, "reward"), reward)
    assert not all(p.requires_grad for p in stack.role_parameters("sft"))  # frozen again after the stage
    assert summary["examples"] == 6 and summary["dropped"] == 0 and summary["truncated"] == 0
    rows = read_metrics(out / "metrics" / "sft.jsonl")
    train_rows = [r for r in rows if "split" not in r]
    eval_rows = [r for r in rows if r.get("split") == "eval"]
    assert [r["step"] for r in train_rows] == list(range(1, 9)) and [r["step"] for r in eval_rows] == [2, 4, 6, 8]
    assert eval_rows[-1]["loss"] < eval_rows[0]["loss"] and summary["eval_loss"] == eval_rows[-1]["loss"]
    assert (out / "adapters" / "sft" / "adapter_config.json").is_file()
    assert (out / "checkpoints" / "sft" / "step-00000008" / "state.json").is_file()
    fresh = load_stack(tiny_llama)
    fresh.load_role("sft", out / "adapters" / "sft")
    assert same(snapshot(fresh, "sft"), snapshot(stack, "sft"))


def test_sft_resume_matches_an_uninterrupted_run(tiny_llama, demos, tmp_path):
    config = sft_config(demos, max_steps=6)  # 6 training examples, batch 2: crosses an epoch boundary
    whole = load_stack(tiny_llama)
    train_sft(whole, config, tmp_path / "whole")
    resumed = load_stack(tiny_llama)
    (tmp_path / "cut" / "checkpoints" / "sft").mkdir(parents=True)
    shutil.copytree(
        tmp_path / "whole" / "checkpoints" / "sft" / "step-00000004",
        tmp_path / "cut" / "checkpoints" / "sft" / "step-00000004",
    )
    shutil.copy(tmp_path / "whole" / "metrics" / "sft.jsonl", tmp_path / "cut" / "metrics.jsonl")
    (tmp_path / "cut" / "metrics").mkdir()
    lines = [r for r in read_metrics(tmp_path / "cut" / "metrics.jsonl") if r["step"] <= 4]
    lines.append({"step": 5, "loss": 123.0})  # logged by the interrupted run after its last checkpoint
    (tmp_path / "cut" / "metrics" / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    train_sft(resumed, config, tmp_path / "cut", resume=True)
    assert same(snapshot(resumed, "sft"), snapshot(whole, "sft"))
    assert read_metrics(tmp_path / "cut" / "metrics" / "sft.jsonl") == read_metrics(
        tmp_path / "whole" / "metrics" / "sft.jsonl"
    )


def test_sft_config_errors_name_the_key():
    from lora_rlhf.config.loader import build

    with pytest.raises(LoraRlhfError, match=r"^sft\.eval_fraction: 1\.5"):
        build(SFTConfig, {"eval_fraction": 1.5}, "sft.")
    with pytest.raises(LoraRlhfError, match=r"sft\.on_bad_row: 'drop' is not one of error, skip"):
        build(SFTConfig, {"on_bad_row": "drop"}, "sft.")


def test_skipped_and_truncated_rows_reach_the_summary(tiny_llama, tmp_path):
    rows = DEMOS + [{"prompt": "hi", "completion": ""}, {"prompt": "hello", "completion": "the quick brown fox " * 30}]
    path = tmp_path / "demos.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = sft_config(path, max_steps=1)
    with pytest.raises(LoraRlhfError, match=r"demos.jsonl, line 9: field 'completion' is empty"):
        train_sft(load_stack(tiny_llama), config, tmp_path / "strict")
    config.on_bad_row = "skip"
    summary = train_sft(load_stack(tiny_llama), config, tmp_path / "run")
    assert summary["dropped"] == 1 and summary["truncated"] == 1 and summary["examples"] == 7


def test_nf4_base_stays_bit_identical_and_differentiable_through_held_out_evals(tiny_llama, demos, tmp_path):
    """bitsandbytes repacks NF4 weights on a CPU's first no-grad eval forward, breaking later gradients."""
    stack = RoleStack.load(BaseModelConfig(name_or_path=tiny_llama, quantization="nf4"))
    base = snapshot(stack)
    config = sft_config(demos, max_steps=2, eval_steps=1)
    config.lora = LoraSettings(r=4, alpha=8, dropout=0.0)
    train_sft(stack, config, tmp_path / "run")
    assert same(snapshot(stack), base)

    ids = torch.randint(10, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)

    def first_layer_grad() -> torch.Tensor:
        stack.set_trainable("sft")
        stack.model.train()
        with stack.use("sft"):
            (-forward.logprobs(stack, "sft", ids, mask).logprobs.mean()).backward()
        grad = stack.role_parameters("sft")[0].grad.clone()
        stack.model.zero_grad(set_to_none=True)
        return grad

    before = first_layer_grad()
    stack.model.eval()
    with torch.no_grad():
        forward.logprobs(stack, "sft", ids, mask)
    assert torch.equal(first_layer_grad(), before)


def test_sft_loss_is_cross_entropy_on_the_response_tokens_only(tiny_llama, demos):
    from lora_rlhf.data.demonstrations import IGNORE_INDEX, load_sft_examples
    from lora_rlhf.sft.loss import collate_sft, sft_loss

    stack = load_stack(tiny_llama)
    stack.add_role("sft", LoraSettings(r=4, dropout=0.0))
    torch.manual_seed(0)
    for p in stack.role_parameters("sft"):
        torch.nn.init.normal_(p, std=0.05)
    examples, _ = load_sft_examples(DatasetSpec(str(demos)), stack.tokenizer, max_length=64)
    batch = collate_sft(examples[:4], stack.tokenizer.pad_token_id)  # right-padded, prompts of different lengths
    every_token = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    with torch.no_grad():
        ours = sft_loss(stack, batch).loss
        with stack.use("sft"):

            def hf_loss(labels: torch.Tensor) -> torch.Tensor:  # transformers' own shifted, masked mean CE
                return stack.model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels
                ).loss

            response_only, with_prompt = hf_loss(batch["labels"]), hf_loss(every_token)
    torch.testing.assert_close(ours, response_only)
    assert not torch.isclose(ours, with_prompt)


def test_gradient_accumulation_matches_one_larger_batch(tiny_llama, tmp_path):
    """2 micro-batches of 1 accumulate to the step one batch of 2 takes (equal response lengths: same token mean)."""
    rows = [
        {"prompt": p, "completion": c}
        for p, c in [
            ("sort the numbers 3 1 2", "no"),
            ("hello", "good"),
            ("reverse the words hello world", "bad"),
            ("count letters", "great"),
            ("answer with yes or no", "hello"),
            ("please", "fox"),
        ]
    ]
    path = tmp_path / "demos.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def adapter_after(batch_size: int, accumulation: int, folder: str) -> dict[str, torch.Tensor]:
        config = sft_config(path, max_steps=3, batch_size=batch_size, gradient_accumulation=accumulation)
        config.eval_fraction, config.lora = 0.0, LoraSettings(r=4, alpha=8, dropout=0.0)
        stack = load_stack(tiny_llama)
        train_sft(stack, config, tmp_path / folder)
        return snapshot(stack, "sft")

    from lora_rlhf.data.demonstrations import IGNORE_INDEX, load_sft_examples

    examples, _ = load_sft_examples(DatasetSpec(str(path)), load_stack(tiny_llama).tokenizer, max_length=64)
    assert len({sum(label != IGNORE_INDEX for label in e.labels) for e in examples}) == 1  # the premise
    accumulated = adapter_after(1, 2, "accumulated")
    for k, v in adapter_after(2, 1, "batched").items():
        torch.testing.assert_close(accumulated[k], v, rtol=1e-4, atol=1e-6)
    single = adapter_after(1, 1, "single")  # the same data order without accumulation: a different run
    assert not all(torch.allclose(accumulated[k], single[k], rtol=1e-4, atol=1e-6) for k in single)


def test_learning_rate_warms_up_then_follows_the_schedule(tiny_llama, demos, tmp_path):
    config = sft_config(demos, max_steps=4, learning_rate=1e-3, warmup_ratio=0.5, scheduler="linear")
    train_sft(load_stack(tiny_llama), config, tmp_path / "run")
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics" / "sft.jsonl") if "split" not in r]
    # "lr" is the rate after the step's scheduler update, as transformers.Trainer logs it: 2 warmup steps
    # from 0 to the peak, then linear decay to 0 at step 4.
    assert [r["lr"] for r in rows] == pytest.approx([5e-4, 1e-3, 5e-4, 0.0])


def test_the_same_seed_gives_the_same_adapter_whatever_ran_before(tiny_llama, demos, tmp_path):
    config = sft_config(demos, max_steps=1)
    config.lora = LoraSettings(r=4, alpha=8, dropout=0.0)
    first = load_stack(tiny_llama)
    train_sft(first, config, tmp_path / "first")
    torch.rand(7)  # other work in the same process moves the global RNG (the pipeline trains stages in turn)
    second = load_stack(tiny_llama)
    train_sft(second, config, tmp_path / "second")
    assert same(snapshot(first, "sft"), snapshot(second, "sft"))  # LoRA A's random init included
