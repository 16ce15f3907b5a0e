"""The reward and value cards' code scores exactly as forward.rewards / .values, using no lora_rlhf.

The card's Python block is extracted from the README.md that `RoleStack.save_role` writes and run
as it stands (only its ADAPTER placeholder points at the saved folder). GPT-2 has absolute position
embeddings, so a card without `position_ids` would score its left-padded row differently: the test
shows that too, so it would catch that omission.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from lora_rlhf.data.batching import pad_left
from lora_rlhf.data.rankings import Ranking, encode_ranking
from lora_rlhf.hub.card import model_card
from lora_rlhf.models import BaseModelConfig, LoraSettings, RoleStack, forward
from lora_rlhf.models.head_usage import LOCAL_ADAPTER, head_usage, hub_adapter
from lora_rlhf.testing import make_tiny_model

# Two prompt + response pairs of different lengths, so one row of the batch is left-padded.
PAIRS = [("sort the numbers 3 1 2", "1 2 3"), ("reverse the words hello world please", "world hello")]
_CODE_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """{"gpt2": folder, "llama": folder}: tiny random models sharing the tiny tokenizer."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("card-bases")
    llama = make_tiny_model(root / "llama", "llama")
    tokenizer = AutoTokenizer.from_pretrained(llama)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(root / "gpt2")
    tokenizer.save_pretrained(root / "gpt2")
    return {"gpt2": root / "gpt2", "llama": llama}


def saved_role(base: Path, role: str, folder: Path) -> RoleStack:
    """A stack whose `role` has a random head and a LoRA update that matters, saved to `folder`."""
    stack = RoleStack.load(BaseModelConfig(str(base), quantization="none", device="cpu"))
    stack.add_role(role, LoraSettings(r=4, dropout=0.0))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in stack.model.named_parameters():
            if f".lora_B.{role}." in name:  # B starts at 0, which would leave the adapter without effect
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        for param in stack.head(role).parameters():  # the head starts at 0, which would score everything 0
            param.copy_(torch.randn(param.shape, generator=generator))
    stack.save_role(role, folder)
    return stack


def card_code(folder: Path) -> str:
    """The card's scoring code, pointed at `folder` (the last Python block of its README.md)."""
    code = _CODE_BLOCK.findall((folder / "README.md").read_text())[-1]
    assert LOCAL_ADAPTER in code
    return code.replace(LOCAL_ADAPTER, f"ADAPTER = {str(folder)!r}")


def run_card(code: str) -> dict:
    namespace: dict = {"__name__": "card"}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 — the card's own text, written by save_role
    return namespace


def batch(stack: RoleStack) -> tuple[torch.Tensor, torch.Tensor]:
    """The PAIRS as the toolkit encodes rankings (prompt, response, EOS), padded on the left."""
    encoded = [encode_ranking(Ranking(p, [r], [0]), stack.tokenizer, 256) for p, r in PAIRS]
    ids, mask = pad_left([e.prompt_ids + e.response_ids[0] for e in encoded], stack.tokenizer.pad_token_id)
    assert mask[:, 0].tolist().count(0) == 1, "one row must be left-padded"
    return ids, mask


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_reward_card_reproduces_stack_rewards(bases, tmp_path, arch) -> None:
    stack = saved_role(bases[arch], "reward", tmp_path / "reward")
    ids, mask = batch(stack)
    with stack.evaluating(), torch.no_grad():
        expected = forward.rewards(stack, "reward", ids, mask)
    card = run_card(card_code(tmp_path / "reward"))

    assert [card["encode"](p, r) for p, r in PAIRS] == [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    torch.testing.assert_close(card["rewards"](ids, mask), expected, rtol=0, atol=1e-5)
    assert expected.abs().min() > 1e-2  # the head is not trivially zero


def test_card_without_position_ids_would_fail(bases, tmp_path) -> None:
    stack = saved_role(bases["gpt2"], "reward", tmp_path / "reward")
    ids, mask = batch(stack)
    with stack.evaluating(), torch.no_grad():
        expected = forward.rewards(stack, "reward", ids, mask)
    code = card_code(tmp_path / "reward")
    assert "position_ids=position_ids, " in code
    broken = run_card(code.replace("position_ids=position_ids, ", ""))["rewards"](ids, mask)

    padded = mask[:, 0] == 0
    assert (broken[padded] - expected[padded]).abs().max() > 1e-2  # GPT-2's absolute positions shift
    torch.testing.assert_close(broken[~padded], expected[~padded], rtol=0, atol=1e-5)


def test_reward_card_needs_the_adapter(bases, tmp_path) -> None:
    """The card's scores differ from the bare base with the same head: the LoRA update is in play."""
    stack = saved_role(bases["llama"], "reward", tmp_path / "reward")
    ids, mask = batch(stack)
    card = run_card(card_code(tmp_path / "reward"))
    with card["model"].disable_adapter():
        bare = card["rewards"](ids, mask)
    assert (card["rewards"](ids, mask) - bare).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_value_card_reproduces_stack_values(bases, tmp_path, arch) -> None:
    stack = saved_role(bases[arch], "value", tmp_path / "value")
    ids, mask = batch(stack)
    with stack.evaluating(), torch.no_grad():
        expected = forward.values(stack, "value", ids, mask)
    card = run_card(card_code(tmp_path / "value"))

    real = mask.bool()
    torch.testing.assert_close(card["values"](ids, mask)[real], expected[real], rtol=0, atol=1e-5)


def test_roles_without_a_head_get_no_scoring_code(bases, tmp_path) -> None:
    stack = RoleStack.load(BaseModelConfig(str(bases["llama"]), quantization="none", device="cpu"))
    stack.add_role("sft", LoraSettings(r=4, dropout=0.0))
    readme = stack.save_role("sft", tmp_path / "sft").joinpath("README.md").read_text()
    assert "head.safetensors" not in readme and len(_CODE_BLOCK.findall(readme)) == 1


@pytest.mark.parametrize(("kind", "subfolder"), [("reward", None), ("value", "value")])
def test_published_card_carries_the_same_code(kind, subfolder) -> None:
    """The Hub card only fetches the folder first; the rest is the code tested above against the stack."""
    text = model_card(kind, base_model="org/base", repo_id="me/run", subfolder=subfolder, head_kind=kind)
    published = _CODE_BLOCK.findall(text)[-1]
    fetch = hub_adapter("me/run", subfolder)
    assert fetch in published and "snapshot_download(" in fetch
    local = published.replace("from huggingface_hub import snapshot_download\n", "").replace(fetch, LOCAL_ADAPTER)
    assert local == _CODE_BLOCK.findall("\n".join(head_usage(kind, "org/base")))[-1]
