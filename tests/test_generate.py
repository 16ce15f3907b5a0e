"""`lora-rlhf generate` and the adapter registry: attach by name, hot-swap, compare, sampling, one generation at a
time.
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from lora_rlhf import LoraRlhfError
from lora_rlhf.cli.main import main
from lora_rlhf.inference import AdapterRegistry, GenerationOptions, UnknownAdapter
from lora_rlhf.testing.adapters import make_run_dir

PROMPTS = ["sort the numbers 3 1 2", "hello world"]
GREEDY = GenerationOptions(max_new_tokens=8)


@pytest.fixture(scope="module")
def run_dir(tiny_llama, tmp_path_factory):
    return make_run_dir(tiny_llama, tmp_path_factory.mktemp("genrun") / "run", ("sft", "policy"))


@pytest.fixture(scope="module")
def registry(run_dir):
    return AdapterRegistry.from_run(run_dir)


def test_run_roles_attach_by_name_and_each_answers_differently(registry):
    assert registry.names == ["base", "policy", "sft"]
    answers = registry.compare(registry.names, PROMPTS, GREEDY)
    assert len({tuple(a) for a in answers.values()}) == 3, answers


@torch.no_grad()
def test_each_adapter_generates_what_peft_alone_generates(registry, run_dir, tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    text = registry.render(PROMPTS[0])
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    for name in ("policy", "sft", "base"):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama)
        if name != "base":
            model = PeftModel.from_pretrained(model, str(run_dir / "adapters" / name))
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        expected = tokenizer.decode(out[0, ids.input_ids.shape[1] :], skip_special_tokens=True)
        assert registry.generate(name, [PROMPTS[0]], GREEDY) == [expected], name


def test_chat_template_and_system_message(registry):
    assert registry.render("hi") == "<|user|>\nhi<|end|>\n<|assistant|>\n"
    assert registry.render("hi", system="be brief").startswith("<|system|>\nbe brief<|end|>\n<|user|>")
    assert registry.render("hi", chat=False) == "hi"
    assert registry.generate("policy", ["hi"], GREEDY) != registry.generate("policy", ["hi"], GREEDY, chat=False)


def test_sampling_options(registry):
    sample = dict(max_new_tokens=8, temperature=1.5)
    first = registry.generate("policy", PROMPTS, GenerationOptions(**sample, seed=1))
    assert first == registry.generate("policy", PROMPTS, GenerationOptions(**sample, seed=1))
    others = [registry.generate("policy", PROMPTS, GenerationOptions(**sample, seed=s)) for s in range(2, 6)]
    assert any(o != first for o in others)
    # top_k = 1 keeps only the argmax: sampling then is greedy decoding.
    assert registry.generate(
        "policy", PROMPTS, GenerationOptions(max_new_tokens=8, temperature=1.0, top_k=1, seed=3)
    ) == registry.generate("policy", PROMPTS, GREEDY)
    full = registry.complete("policy", [registry.render(PROMPTS[0])], GREEDY)[0]
    stop = full.text[2:4]
    cut = registry.complete("policy", [registry.render(PROMPTS[0])], GenerationOptions(max_new_tokens=8, stop=[stop]))[
        0
    ]
    assert cut.text == full.text[: full.text.find(stop)] and cut.finish_reason == "stop"
    for bad in (dict(max_new_tokens=0), dict(temperature=-1), dict(top_p=0), dict(top_k=-1), dict(stop=[""])):
        with pytest.raises(LoraRlhfError):
            GenerationOptions(**bad)


def test_compare_decodes_every_adapter_in_one_batch_as_each_alone(registry, monkeypatch):
    sample = GenerationOptions(max_new_tokens=8, temperature=1.0, seed=4)
    alone = {n: registry.generate(n, PROMPTS, GREEDY) for n in registry.names}
    sampled = {n: registry.generate(n, PROMPTS, sample) for n in registry.names}
    forwards = []
    original = registry.stack.next_token_logits
    monkeypatch.setattr(
        registry.stack, "next_token_logits", lambda roles, *a, **kw: forwards.append(set(roles)) or original(roles, *a)
    )
    assert registry.compare(registry.names, PROMPTS, GREEDY) == alone
    assert registry.compare(registry.names, PROMPTS, sample) == sampled
    assert set(registry.names) in forwards  # the adapters shared a forward


def test_generations_never_run_under_another_requests_adapter(registry, monkeypatch):
    """Slow every forward down and record its rows' adapters: every call must see only its own."""
    seen: list[tuple[str, set[str]]] = []
    expected = {n: registry.generate(n, PROMPTS[:1], GREEDY) for n in ("policy", "sft", "base")}
    original = registry.stack.next_token_logits

    def slow_forward(roles, *args, **kwargs):
        time.sleep(0.01)
        out = original(roles, *args, **kwargs)
        seen.append((threading.current_thread().name, set(roles)))
        return out

    monkeypatch.setattr(registry.stack, "next_token_logits", slow_forward)
    names = ["policy", "sft", "base"] * 3
    answers: dict[int, list[str]] = {}

    def ask(i: int, name: str) -> None:
        answers[i] = registry.generate(name, PROMPTS[:1], GREEDY)

    threads = [threading.Thread(target=ask, args=(i, n), name=n) for i, n in enumerate(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {name for name, _ in seen} == set(names)
    for wanted, roles in seen:
        assert roles == {wanted}, seen
    assert all(answers[i] == expected[n] for i, n in enumerate(names))


def test_attach_detach_and_reattach(tiny_llama, run_dir):
    registry = AdapterRegistry.load(tiny_llama, quantization="none", device="cpu")
    bare = registry.generate("base", PROMPTS, GREEDY)
    registry.attach("one", run_dir / "adapters" / "policy")
    registry.attach("two", run_dir / "adapters" / "sft")
    one = registry.generate("one", PROMPTS, GREEDY)
    registry.detach("one")
    assert registry.names == ["base", "two"]
    with pytest.raises(UnknownAdapter):
        registry.generate("one", PROMPTS, GREEDY)
    registry.detach("two")  # the last adapter: the base is unwrapped again
    assert registry.names == ["base"] and registry.generate("base", PROMPTS, GREEDY) == bare
    registry.attach("one", run_dir / "adapters" / "policy")
    assert registry.generate("one", PROMPTS, GREEDY) == one
    with pytest.raises(LoraRlhfError, match="already exists"):
        registry.attach("one", run_dir / "adapters" / "policy")
    with pytest.raises(LoraRlhfError, match="neither an existing folder nor a Hub id"):
        registry.attach("x", "./no/such/folder")
    with pytest.raises(LoraRlhfError, match="run directory"):
        registry.attach("x", run_dir)


def test_hub_ids_are_downloaded_with_snapshot_download(tiny_llama, run_dir, tmp_path, monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, **kwargs):
        calls.append((repo_id, revision, allow_patterns))
        root = tmp_path / repo_id.replace("/", "--")
        shutil.copytree(run_dir / "adapters", root, dirs_exist_ok=True)
        return str(root)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    registry = AdapterRegistry.load(tiny_llama, quantization="none", device="cpu")
    registry.attach("hub-policy", "me/run/policy", revision="v1")
    assert calls == [("me/run", "v1", ["policy/*"])]
    local = AdapterRegistry.from_run(run_dir, roles=["policy"])
    assert registry.generate("hub-policy", PROMPTS, GREEDY) == local.generate("policy", PROMPTS, GREEDY)
    with pytest.raises(LoraRlhfError, match="holds no adapter_config.json"):
        registry.attach("nothing", "me/run")


def test_cli_compare_side_by_side(run_dir, capsys):
    code = main(
        ["generate", "--run", str(run_dir), "--compare", "-p", PROMPTS[0], "-p", PROMPTS[1], "--max-new-tokens", "6"]
    )
    out = capsys.readouterr().out
    assert code == 0
    header = next(line for line in out.splitlines() if line.startswith("base"))
    assert "| policy" in header and "| sft" in header
    assert out.count(">>> ") == 2


def test_cli_single_model_and_json(run_dir, registry, capsys):
    assert main(["generate", "--run", str(run_dir), "-p", PROMPTS[0], "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == registry.generate("policy", PROMPTS[:1], GREEDY)[0]
    assert (
        main(
            [
                "generate",
                "--run",
                str(run_dir),
                "-m",
                "base",
                "-m",
                "sft",
                "-p",
                PROMPTS[1],
                "--max-new-tokens",
                "8",
                "--json",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["model"] for r in rows] == ["base", "sft"]
    assert rows[1]["response"] == registry.generate("sft", PROMPTS[1:], GREEDY)[0]


def test_cli_base_with_named_adapters_and_errors(tiny_llama, run_dir, capsys):
    adapter = f"mine={run_dir / 'adapters' / 'sft'}"
    assert (
        main(
            ["generate", "--base", tiny_llama, "--adapter", adapter, "-m", "mine", "-p", "hi", "--max-new-tokens", "4"]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["generate", "--base", tiny_llama, "-m", "nope", "-p", "hi"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lora-rlhf")]
    assert len(err) == 1 and "model 'nope' does not exist" in err[0]
    assert main(["generate", "--base", tiny_llama, "--run", str(run_dir), "-p", "hi"]) == 2
    assert "exactly one of --base" in capsys.readouterr().err
    assert main(["generate", "--base", tiny_llama]) == 2
    assert "no prompts" in capsys.readouterr().err


def test_adapters_hot_swap_on_an_nf4_base(tiny_llama, run_dir):
    registry = AdapterRegistry.load(tiny_llama, quantization="nf4", device="cpu")
    registry.attach("policy", run_dir / "adapters" / "policy")
    answers = registry.compare(["base", "policy"], PROMPTS[:1], GenerationOptions(max_new_tokens=4))
    assert answers["base"] != answers["policy"]


def test_a_seed_torch_cannot_take_is_a_one_line_error():
    """Issue 29: a seed past 64 bits reached torch.Generator.manual_seed as an OverflowError."""
    for seed in (2**64, -(2**63) - 1, 2**80):
        with pytest.raises(LoraRlhfError, match=rf"seed: {seed} must be an integer in \[-2\*\*63, 2\*\*64 - 1\]"):
            GenerationOptions(temperature=1.0, seed=seed)
    for seed in (2**64 - 1, -(2**63), 0):
        GenerationOptions(temperature=1.0, seed=seed)


def _renamed_base(folder, tmp_path, base: str):
    """A copy of the adapter at `folder` whose adapter_config.json names another base (same shapes)."""
    copy = tmp_path / f"from-{base.replace('/', '-')}"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base
    (copy / "adapter_config.json").write_text(json.dumps(config))
    return copy


def test_an_adapter_naming_another_base_warns_naming_both(tiny_llama, run_dir, tmp_path, capsys, caplog):
    """Issue 29: an adapter trained on another base attached with no word in generate and generate --run."""
    other = _renamed_base(run_dir / "adapters" / "policy", tmp_path, "someone/Llama-Other-8B")
    with caplog.at_level("WARNING", logger="lora_rlhf.models.adapter_io"):
        args = ["generate", "--base", tiny_llama, "--quantization", "none", "--adapter", f"other={other}"]
        assert main([*args, "--model", "other", "--prompt", "hi", "--max-new-tokens", "2"]) == 0
    assert "trained on someone/Llama-Other-8B, not on this base" in caplog.text and tiny_llama in caplog.text
    caplog.clear()
    shutil.rmtree(run_dir / "adapters" / "policy")
    shutil.copytree(other, run_dir / "adapters" / "policy")
    try:
        with caplog.at_level("WARNING", logger="lora_rlhf.models.adapter_io"):
            run_args = [
                "generate",
                "--run",
                str(run_dir),
                "--model",
                "policy",
                "--prompt",
                "hi",
                "--max-new-tokens",
                "2",
            ]
            assert main(run_args) == 0
        assert caplog.text.count("trained on someone/Llama-Other-8B") == 1  # sft names this base: no word
    finally:
        config = json.loads((run_dir / "adapters" / "policy" / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = json.loads(
            (run_dir / "adapters" / "sft" / "adapter_config.json").read_text()
        )["base_model_name_or_path"]
        (run_dir / "adapters" / "policy" / "adapter_config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "/models/SmolLM2-135M-Instruct/", True),
        ("/home/a/.cache/lora_rlhf/tiny-llama", "/root/.cache/lora_rlhf/tiny-llama", True),
        ("meta-llama/Llama-3.1-8B", "mistralai/Mistral-7B-v0.3", False),
        ("unknown", "anything", True),
    ],
)
def test_same_base_names(a, b, same):
    from lora_rlhf.models.adapter_io import same_base

    assert same_base(a, b) is same


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xff\xfe{}", "is not UTF-8 text (byte 0)"),
        (b"[" * 200_000 + b"]" * 200_000, "nests arrays or objects too deeply"),
        (b"[1, 2]", "holds a JSON list"),
        ({"peft_type": "NOPE"}, "peft_type 'NOPE' is not 'LORA'"),
        ({"r": "eight"}, "r 'eight' must be a positive integer"),
    ],
)
def test_an_adapter_config_peft_cannot_read_is_one_line(tiny_llama, run_dir, tmp_path, capsys, content, expected):
    """Issue 29: each was a traceback from PEFT (RecursionError, KeyError, TypeError) in generate, a 500 in serve."""
    folder = shutil.copytree(run_dir / "adapters" / "policy", tmp_path / "broken")
    config = folder / "adapter_config.json"
    if isinstance(content, dict):
        content = json.dumps(json.loads(config.read_text()) | content).encode()
    config.write_bytes(content)
    args = ["generate", "--base", tiny_llama, "--quantization", "none", "--adapter", f"x={folder}", "-p", "hi"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("lora-rlhf generate: error: ") and f"{config}" in err and expected in err
