"""The role stack: one base, many adapters, frozen roles stay frozen, save/load round trips."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lora_rlhf import BaseModelConfig, LoraRlhfError, LoraSettings, RoleStack
from lora_rlhf.models import engine, forward
from lora_rlhf.models.base import load_base_model

ARCHS = ["llama", "qwen2", "gpt_neox"]


def make_stack(folder: str, quantization: str = "none", **kwargs) -> RoleStack:
    return RoleStack.load(BaseModelConfig(folder, quantization=quantization, **kwargs))


def batch(stack: RoleStack):
    enc = stack.tokenizer(["sort the numbers 3 1 2", "hello world"], return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


def full_stack(folder: str, quantization: str = "none", **kwargs) -> RoleStack:
    stack = make_stack(folder, quantization, **kwargs)
    stack.add_role("sft", LoraSettings(r=4))
    stack.add_role("reward", LoraSettings(r=4))
    stack.copy_role("sft", "policy")
    stack.copy_role("reward", "value")
    return stack


def perturb(stack: RoleStack, role: str, seed: int = 0) -> None:
    """Give a role non-trivial weights (a fresh LoRA has B = 0 and equals the base)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in stack.role_parameters(role):
            p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * 0.1)


def snapshot(stack: RoleStack) -> dict[str, torch.Tensor]:
    state = {n: p.detach().clone() for n, p in stack.model.named_parameters()}
    state.update({f"head.{n}": p.detach().clone() for n, p in stack.heads.named_parameters()})
    return state


def storage_bytes(module: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


@pytest.mark.parametrize("arch", ARCHS)
def test_one_base_copy_however_many_roles(tiny_model_dirs, arch):
    stack = make_stack(tiny_model_dirs[arch])
    base_ptrs = {n: p.data_ptr() for n, p in stack.base_model.named_parameters()}
    before = storage_bytes(stack.base_model)
    stack.add_role("sft", LoraSettings(r=4))
    stack.add_role("reward", LoraSettings(r=4))
    stack.copy_role("sft", "policy")
    stack.copy_role("reward", "value")
    after = storage_bytes(stack.model) + storage_bytes(stack.heads)
    adapters = sum(stack.adapter_nbytes(r) for r in stack.roles)
    assert after - before == adapters
    # every base weight is still the very tensor loaded at the start
    wrapped = {
        n.replace(".base_layer", ""): p.data_ptr() for n, p in stack.base_model.named_parameters() if "lora_" not in n
    }
    assert wrapped == base_ptrs


@pytest.mark.parametrize("arch", ARCHS)
def test_training_one_role_changes_only_that_role(tiny_model_dirs, arch):
    stack = full_stack(tiny_model_dirs[arch])
    before = snapshot(stack)
    ids, mask = batch(stack)
    stack.set_trainable("value")
    optimizer = torch.optim.SGD(stack.role_parameters("value"), lr=0.1)
    with stack.use("value"):
        (forward.values(stack, "value", ids, mask) - 1).pow(2).mean().backward()  # a fresh head outputs 0: pull it to 1
    optimizer.step()
    after = snapshot(stack)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed, "the value role did not change"
    assert all(".value." in n or n.startswith("head.value.") for n in changed), changed
    assert any(n.startswith("head.value.") for n in changed)


def test_reference_equals_sft_and_stays_fixed_while_policy_trains(tiny_llama):
    stack = make_stack(tiny_llama)
    stack.add_role("sft", LoraSettings(r=4))
    perturb(stack, "sft")
    stack.copy_role("sft", "policy")
    ids, mask = batch(stack)
    with torch.no_grad():
        ref = forward.logprobs(stack, "reference", ids, mask).logprobs
        assert torch.equal(ref, forward.logprobs(stack, "sft", ids, mask).logprobs)
        assert torch.equal(ref, forward.logprobs(stack, "policy", ids, mask).logprobs)
        base = forward.logprobs(stack, "base", ids, mask).logprobs
    assert not torch.allclose(ref, base)
    stack.set_trainable("policy")
    optimizer = torch.optim.Adam(stack.role_parameters("policy"), lr=1e-2)
    for _ in range(3):
        with stack.use("policy"):
            loss = -forward.logprobs(stack, "policy", ids, mask).logprobs.mean()
            loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        assert torch.equal(ref, forward.logprobs(stack, "reference", ids, mask).logprobs)
        assert not torch.allclose(ref, forward.logprobs(stack, "policy", ids, mask).logprobs)


def test_use_restores_adapter_and_grads_on_exception(tiny_llama):
    stack = full_stack(tiny_llama)
    stack.set_trainable("policy")
    grads = [p.requires_grad for p in stack.model.parameters()]
    active = stack.model.active_adapter
    with pytest.raises(RuntimeError, match="boom"):
        with stack.use("value"):
            assert stack.model.active_adapter == "value"
            raise RuntimeError("boom")
    assert stack.model.active_adapter == active
    assert [p.requires_grad for p in stack.model.parameters()] == grads
    with stack.use("base"):
        pass
    assert [p.requires_grad for p in stack.model.parameters()] == grads
    assert all(p.requires_grad for p in stack.role_parameters("policy"))
    assert not any(p.requires_grad for p in stack.role_parameters("value"))


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_save_load_identical_including_vanilla_peft(tiny_model_dirs, arch, tmp_path):
    folder = tiny_model_dirs[arch]
    stack = full_stack(folder)
    perturb(stack, "policy", 1)
    perturb(stack, "value", 2)
    ids, mask = batch(stack)
    with torch.no_grad():
        logprobs = forward.logprobs(stack, "policy", ids, mask).logprobs
        values = forward.values(stack, "value", ids, mask)
    stack.save_role("policy", tmp_path / "policy")
    stack.save_role("value", tmp_path / "value")
    assert sorted(p.name for p in (tmp_path / "value").iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "head.safetensors",
    ]

    fresh = make_stack(folder)
    fresh.load_role("policy", tmp_path / "policy")
    fresh.load_role("value", tmp_path / "value")
    with torch.no_grad():
        assert torch.equal(forward.logprobs(fresh, "policy", ids, mask).logprobs, logprobs)
        assert torch.equal(forward.values(fresh, "value", ids, mask), values)
    assert not any(p.requires_grad for p in fresh.role_parameters("value"))

    vanilla = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), str(tmp_path / "policy"))
    with torch.no_grad():
        with stack.use("policy"):
            ours = stack.model(input_ids=ids, attention_mask=mask).logits
        theirs = vanilla(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(theirs, ours)


def test_nf4_on_cpu(tiny_llama, tmp_path):
    import bitsandbytes as bnb

    stack = full_stack(tiny_llama, "nf4", gradient_checkpointing=True)
    linear4 = [m for m in stack.base_model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linear4 and linear4[0].weight.quant_state.quant_type == "nf4"
    ids, mask = batch(stack)
    stack.set_trainable("policy")
    stack.model.train()
    with stack.use("policy"):
        out = forward.logprobs(stack, "policy", ids, mask, with_entropy=True)
        out.logprobs.mean().backward()
    assert all(p.grad is not None for p in stack.role_parameters("policy"))
    assert torch.isfinite(out.entropy).all()
    generated = engine.sample(stack, "policy", ids, mask, max_new_tokens=4, temperature=0.0).sequences
    assert generated.shape[1] <= ids.shape[1] + 4
    assert stack.model.training and stack.causal_lm().is_gradient_checkpointing  # restored after generate
    stack.model.eval()
    with torch.no_grad():
        values = forward.values(stack, "value", ids, mask)
    stack.save_role("value", tmp_path / "value")
    reloaded = make_stack(tiny_llama, "nf4", gradient_checkpointing=True)
    reloaded.load_role("value", tmp_path / "value")
    with torch.no_grad():
        torch.testing.assert_close(forward.values(reloaded, "value", ids, mask), values)


def test_chunked_logprobs_match_full_logits(tiny_llama):
    stack = make_stack(tiny_llama)
    stack.add_role("sft", LoraSettings(r=4))
    perturb(stack, "sft")
    ids, mask = batch(stack)
    with torch.no_grad():
        chunked = forward.logprobs(stack, "sft", ids, mask, chunk_size=2, temperature=0.7).logprobs
        with stack.use("sft"):
            logits = stack.model(
                input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)
            ).logits
        full = (logits[:, :-1].float() / 0.7).log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(chunked, full)


def test_reward_reads_last_real_token(tiny_llama):
    stack = full_stack(tiny_llama)
    ids, mask = batch(stack)  # left padded
    with torch.no_grad():
        scores = forward.rewards(stack, "reward", ids, mask)
        per_token = forward.values(stack, "reward", ids, mask)
    torch.testing.assert_close(scores, per_token[:, -1])
    right_ids = torch.stack([torch.roll(r, -int((m == 0).sum())) for r, m in zip(ids, mask)])
    right_mask = torch.stack([torch.roll(m, -int((m == 0).sum())) for m in mask])
    with torch.no_grad():
        torch.testing.assert_close(
            forward.rewards(stack, "reward", right_ids, right_mask), scores, atol=1e-5, rtol=1e-5
        )


# ------------------------------------------------------------------ errors
def test_error_unknown_role(tiny_llama):
    stack = full_stack(tiny_llama)
    with pytest.raises(LoraRlhfError, match="unknown role 'polcy'"):
        with stack.use("polcy"):
            pass


def test_error_role_before_it_exists(tiny_llama):
    stack = make_stack(tiny_llama)
    stack.add_role("sft", LoraSettings(r=4))
    with pytest.raises(LoraRlhfError, match="role 'value' has not been added yet"):
        forward.values(stack, "value", *batch(stack))
    with pytest.raises(LoraRlhfError, match="role 'reward' has not been added yet"):
        stack.copy_role("reward", "value")


def test_error_missing_model_path(tmp_path):
    with pytest.raises(LoraRlhfError, match="model path '.*nowhere' does not exist"):
        load_base_model(BaseModelConfig(str(tmp_path / "nowhere")))


def test_error_adapter_for_another_base(tiny_model_dirs, tmp_path):
    from lora_rlhf.testing import make_tiny_model

    other = make_tiny_model(tmp_path / "wide", "llama", hidden=96)
    wide = make_stack(str(other))
    wide.add_role("sft", LoraSettings(r=4))
    wide.save_role("sft", tmp_path / "wide-sft")
    stack = make_stack(tiny_model_dirs["llama"])
    with pytest.raises(
        LoraRlhfError,
        match=r"made for another base: model\.layers\.0\.\S+ has input size \d+ here, the adapter expects \d+",
    ):
        stack.load_role("sft", tmp_path / "wide-sft")
    neox = make_stack(tiny_model_dirs["gpt_neox"])
    neox.add_role("sft", LoraSettings(r=4))
    neox.save_role("sft", tmp_path / "neox-sft")
    with pytest.raises(LoraRlhfError, match="made for another base: this base has no module"):
        stack.load_role("sft", tmp_path / "neox-sft")
    with pytest.raises(LoraRlhfError, match="adapter folder .* does not exist"):
        stack.load_role("sft", tmp_path / "missing")


def test_error_bad_config_values():
    with pytest.raises(LoraRlhfError, match="quantization: 'fp4' is not one of"):
        BaseModelConfig("x", quantization="fp4")
    with pytest.raises(LoraRlhfError, match="r: 0 is not a positive integer"):
        LoraSettings(r=0)


def test_trust_remote_code_is_off_by_default():
    assert BaseModelConfig("x").trust_remote_code is False


def test_atomic_save_leaves_old_folder_on_failure(tiny_llama, tmp_path, monkeypatch):
    from lora_rlhf.models import adapter_io

    stack = full_stack(tiny_llama)
    stack.save_role("policy", tmp_path / "policy")
    original = (tmp_path / "policy" / "adapter_model.safetensors").read_bytes()
    perturb(stack, "policy")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(adapter_io, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        stack.save_role("policy", tmp_path / "policy")
    assert (tmp_path / "policy" / "adapter_model.safetensors").read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["policy"]


# ------------------------------------------------------------------ loading and per-role settings
def test_each_role_has_its_own_lora_settings(tiny_llama):
    stack = make_stack(tiny_llama)
    stack.add_role("sft", LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    stack.add_role("reward", LoraSettings(r=8, alpha=32, dropout=0.1))
    config = stack.model.peft_config
    assert (config["sft"].r, config["sft"].lora_alpha, config["sft"].lora_dropout) == (4, 8, 0.0)
    assert (config["reward"].r, config["reward"].lora_alpha, config["reward"].lora_dropout) == (8, 32, 0.1)

    def adapted(role: str) -> dict[str, int]:
        """{module kind: rank} of every layer carrying `role`'s LoRA A matrix."""
        return {
            n.split(".lora_A")[0].rsplit(".", 1)[-1]: p.shape[0]
            for n, p in stack.model.named_parameters()
            if f".lora_A.{role}." in n
        }

    assert adapted("sft") == {"q_proj": 4, "v_proj": 4}
    assert set(adapted("reward")) >= {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert set(adapted("reward").values()) == {8}


def test_value_starts_as_a_copy_of_reward_head_included(tiny_llama):
    stack = make_stack(tiny_llama)
    stack.add_role("reward", LoraSettings(r=4))
    perturb(stack, "reward")  # adapter and head
    stack.copy_role("reward", "value")
    ids, mask = batch(stack)
    with torch.no_grad():
        assert torch.equal(forward.values(stack, "value", ids, mask), forward.values(stack, "reward", ids, mask))
    for mine, theirs in zip(stack.role_parameters("value"), stack.role_parameters("reward"), strict=True):
        assert torch.equal(mine, theirs) and mine.data_ptr() != theirs.data_ptr()  # a copy, not shared storage


def test_compute_dtype_reaches_the_weights_and_the_nf4_matmuls(tiny_llama):
    import bitsandbytes as bnb

    bf16 = make_stack(tiny_llama, compute_dtype="bfloat16")
    assert {p.dtype for p in bf16.base_model.parameters()} == {torch.bfloat16}
    nf4 = make_stack(tiny_llama, "nf4", compute_dtype="float32")
    assert {m.compute_dtype for m in nf4.base_model.modules() if isinstance(m, bnb.nn.Linear4bit)} == {torch.float32}


def test_tokenizer_gets_a_pad_token_and_left_padding(tiny_llama, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    from lora_rlhf.models.base import load_tokenizer

    folder = tmp_path / "no-pad"
    shutil.copytree(tiny_llama, folder)
    plain = AutoTokenizer.from_pretrained(folder)
    plain.pad_token, plain.padding_side = None, "right"
    plain.save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).pad_token is None  # the model ships no pad token
    tokenizer = load_tokenizer(BaseModelConfig(str(folder)))
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.padding_side == "left"
    enc = tokenizer(["hello", "the quick brown fox"], padding=True)
    assert enc.attention_mask[0][0] == 0 and enc.attention_mask[0][-1] == 1  # short row padded on the left


def test_trust_remote_code_is_passed_only_when_asked(tiny_llama, monkeypatch):
    import transformers

    seen = []

    class Recorder:
        @staticmethod
        def from_pretrained(source, **kwargs):
            seen.append(kwargs["trust_remote_code"])
            raise OSError("recorded")

    monkeypatch.setattr(transformers, "AutoModelForCausalLM", Recorder)
    monkeypatch.setattr(transformers, "AutoTokenizer", Recorder)
    from lora_rlhf.models.base import load_tokenizer

    for asked in (False, True):
        for load in (load_base_model, load_tokenizer):
            with pytest.raises(LoraRlhfError, match="recorded"):
                load(BaseModelConfig(tiny_llama, trust_remote_code=asked))
    assert seen == [False, False, True, True]


def test_int8_on_cpu(tiny_llama):
    import bitsandbytes as bnb

    stack = make_stack(tiny_llama, "int8")
    stack.add_role("sft", LoraSettings(r=4))
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in stack.base_model.modules())
    ids, mask = batch(stack)
    stack.set_trainable("sft")
    stack.model.train()
    with stack.use("sft"):
        forward.logprobs(stack, "sft", ids, mask).logprobs.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in stack.role_parameters("sft"))


def test_remove_role_leaves_the_others_and_the_last_one_restores_the_bare_base(tiny_llama):
    stack = RoleStack.load(BaseModelConfig(tiny_llama, quantization="none"))
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.ones_like(ids)
    base = forward.logprobs(stack, "base", ids, mask).logprobs
    stack.add_role("sft")
    stack.add_role("reward")
    with torch.no_grad():
        for p in stack.role_parameters("sft"):
            p.add_(0.3)
    sft = forward.logprobs(stack, "sft", ids, mask).logprobs
    stack.remove_role("reward")
    assert stack.roles == ("sft",) and "reward" not in stack.heads
    assert torch.equal(forward.logprobs(stack, "sft", ids, mask).logprobs, sft)
    stack.remove_role("sft")
    assert stack.roles == ()
    assert torch.allclose(forward.logprobs(stack, "base", ids, mask).logprobs, base)
    stack.add_role("policy")  # the stack is usable again, as before its first role
    with pytest.raises(LoraRlhfError, match="has not been added"):
        stack.remove_role("value")


def test_logprobs_from_a_start_position_and_entropy_match_the_full_computation(tiny_llama):
    stack = RoleStack.load(BaseModelConfig(tiny_llama, quantization="none"))
    stack.add_role("sft")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        full = forward.logprobs(stack, "sft", ids, mask, with_entropy=True, chunk_size=2)
        tail = forward.logprobs(stack, "sft", ids, mask, with_entropy=True, chunk_size=2, start=3)
        logits = stack.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    logp = logits.log_softmax(-1)
    assert torch.allclose(full.logprobs, logp.gather(-1, ids[:, 1:, None]).squeeze(-1), atol=1e-5)
    assert torch.allclose(full.entropy, -(logp.exp() * logp).sum(-1), atol=1e-4)
    assert torch.allclose(tail.logprobs, full.logprobs[:, 3:]) and torch.allclose(tail.entropy, full.entropy[:, 3:])


def test_remove_role_leaves_every_gradient_flag_as_it_was(tiny_llama):
    stack = RoleStack.load(BaseModelConfig(tiny_llama, quantization="none"))
    for role in ("sft", "reward", "policy"):
        stack.add_role(role)
    assert stack.model.active_adapter == "sft"
    stack.remove_role("sft")  # the active adapter: PEFT activates another one, which flips its requires_grad
    assert not any(p.requires_grad for role in stack.roles for p in stack.role_parameters(role))


def test_mode_context_managers_restore_the_mode_and_dropout(tiny_llama):
    stack = make_stack(tiny_llama)
    stack.add_role("sft", LoraSettings(r=4, dropout=0.1))
    dropouts = [m for m in stack.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == 0.1 for m in dropouts if m.p)
    stack.model.eval()
    with stack.training(dropout=False):
        assert stack.model.training and all(m.p == 0.0 for m in dropouts)
        with stack.evaluating():
            assert not stack.model.training
        assert stack.model.training
    assert not stack.model.training and any(m.p == 0.1 for m in dropouts)
    with pytest.raises(RuntimeError), stack.training():
        assert stack.model.training and any(m.p == 0.1 for m in dropouts)
        raise RuntimeError("a failed step")
    assert not stack.model.training


def test_an_empty_adapter_weights_file_is_a_one_line_error(tiny_llama, tmp_path):
    stack = make_stack(tiny_llama)
    stack.add_role("sft", LoraSettings(r=4))
    folder = stack.save_role("sft", tmp_path / "sft")
    (folder / "adapter_model.safetensors").write_bytes(b"")
    other = make_stack(tiny_llama)
    with pytest.raises(LoraRlhfError, match="not a readable safetensors file"):
        other.load_role("sft", folder)


@pytest.mark.parametrize(
    ("tensors", "expected"),
    [
        ({"weight": (1, None), "bias": (4,)}, r"tensor 'bias' has shape \[4\], a reward head's is \[1\]"),
        ({"weight": (1, 3), "bias": (1,)}, r"tensor 'weight' has shape \[1, 3\], a reward head's is \[1, \d+\]"),
        ({"weight": (1, None)}, "tensor 'bias' is missing"),
        ({"weight": (1, None), "bias": (1,), "scale": (1,)}, "tensor 'scale' is not part of a reward head"),
    ],
)
def test_a_head_of_the_wrong_shape_is_a_one_line_error(tiny_llama, tmp_path, tensors, expected):
    """Issue 29: a head.safetensors whose tensors do not fit was load_state_dict's size-mismatch traceback."""
    from safetensors.torch import save_file

    stack = make_stack(tiny_llama)
    stack.add_role("reward", LoraSettings(r=4), head="reward")
    folder = stack.save_role("reward", tmp_path / "reward")
    hidden = stack.base_model.config.hidden_size
    shapes = {name: tuple(hidden if n is None else n for n in shape) for name, shape in tensors.items()}
    save_file(
        {name: torch.zeros(shape) for name, shape in shapes.items()},
        str(folder / "head.safetensors"),
        metadata={"kind": "reward", "hidden_size": str(hidden)},
    )
    other = make_stack(tiny_llama)
    with pytest.raises(LoraRlhfError, match=expected):
        other.load_role("reward", folder)
    assert "reward" not in other.roles  # nothing half-attached
    with pytest.raises(LoraRlhfError, match=expected):
        stack.restore_role("reward", folder)


@pytest.mark.parametrize(
    ("metadata", "content", "expected"),
    [
        (
            {"kind": "reward", "hidden_size": "abc"},
            None,
            r"metadata \(kind 'reward', hidden_size 'abc'\) is not a reward",
        ),
        ({"kind": "banana"}, None, r"metadata \(kind 'banana'"),
        (None, b"", "is not a readable safetensors file"),
        (None, b"\x10\x00\x00\x00\x00\x00\x00\x00{", "is not a readable safetensors file"),
    ],
)
def test_a_head_file_that_is_not_a_head_is_a_one_line_error(tiny_llama, tmp_path, metadata, content, expected):
    """Issue 29: an empty or torn head.safetensors, or metadata that names no head, were tracebacks (SafetensorError,
    ValueError from int() or from ScalarHead) wherever a stage loads a role: ppo, eval --run."""
    from safetensors.torch import load_file, save_file

    stack = make_stack(tiny_llama)
    stack.add_role("reward", LoraSettings(r=4), head="reward")
    folder = stack.save_role("reward", tmp_path / "reward")
    head = folder / "head.safetensors"
    if content is None:
        save_file(load_file(str(head)), str(head), metadata=metadata)
    else:
        head.write_bytes(content)
    other = make_stack(tiny_llama)
    with pytest.raises(LoraRlhfError, match=expected):
        other.load_role("reward", folder)
    assert "reward" not in other.roles
