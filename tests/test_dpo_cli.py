"""`lora-rlhf dpo` on the tiny-test recipe: the run-directory contract, the re-run rules, the pipeline's dpo
section, and the dpo adapter used unchanged by generate, serve, merge and push (issue 27, items 1 and 4)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lora_rlhf.cli.main import main
from lora_rlhf.config.recipe import RECIPES, load_recipe

from run_contract import check_dpo_artifacts

TINY = str(RECIPES / "tiny-test.yaml")
DPO = ["dpo.train.batch_size=2", "dpo.train.logging_steps=1", "dpo.train.eval_steps=2", "dpo.train.save_steps=2"]


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory) -> Path:
    """sft, then dpo on the rankings the demo's labeler writes (the RM's file), through the CLI."""
    run = tmp_path_factory.mktemp("dpo-cli") / "run"
    assert main(["sft", "--config", TINY, "--output-dir", str(run), *DPO]) == 0
    assert main(["dpo", "--config", TINY, "--output-dir", str(run), *DPO]) == 0
    return run


def test_the_dpo_stage_meets_the_run_directory_contract(dpo_run, capsys):
    check_dpo_artifacts(dpo_run)
    assert (dpo_run / "data" / "rankings.jsonl").is_file()  # the RM's rankings, written for dpo when rm never ran
    assert load_recipe(dpo_run / "recipe.yaml").dpo.beta == 0.1
    assert main(["dpo", "--config", TINY, "--output-dir", str(dpo_run), *DPO]) == 2
    assert "stage dpo already finished" in capsys.readouterr().err


def test_an_interrupted_dpo_needs_resume(dpo_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(dpo_run, run)
    shutil.rmtree(run / "adapters" / "dpo")
    assert main(["dpo", "--config", TINY, "--output-dir", str(run), *DPO]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(["dpo", "--config", TINY, "--output-dir", str(run), "--resume", *DPO]) == 0
    check_dpo_artifacts(run)


def test_the_pipeline_runs_dpo_before_eval_only_when_the_recipe_enables_it(monkeypatch, tmp_path):
    from lora_rlhf.pipeline import runner
    from lora_rlhf.pipeline.run_dir import RunDir

    ran: list[str] = []
    monkeypatch.setattr(
        runner, "_RUNNERS", {s: (lambda *a, s=s: ran.append(s) or ("trained", {})) for s in runner.STAGES}
    )
    pipeline = ("sft", "rm", "ppo", "eval")
    runner.run_stages(load_recipe(TINY), RunDir(tmp_path), pipeline, stack=object())
    assert ran == list(pipeline)
    ran.clear()
    runner.run_stages(load_recipe(TINY, ["dpo.enabled=true"]), RunDir(tmp_path), pipeline, stack=object())
    assert ran == ["sft", "rm", "ppo", "dpo", "eval"]
    assert runner.with_dpo(load_recipe(TINY, ["dpo.enabled=true"]), ("eval",)) == ("eval",)  # eval alone trains nothing


def test_the_dpo_adapter_reloads_with_vanilla_peft(dpo_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lora_rlhf.models.tiny import tiny_model_dir

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"))
    model = PeftModel.from_pretrained(base, dpo_run / "adapters" / "dpo")
    assert torch.isfinite(model(torch.tensor([[5, 6, 7, 8]])).logits).all()


def test_generate_answers_with_the_dpo_role_of_a_run(dpo_run, capsys):
    args = ["generate", "--run", str(dpo_run), "-p", "sort the numbers 3 1 2", "--max-new-tokens", "4", "--json"]
    assert main([*args, "-m", "dpo", "-m", "sft", "--compare"]) == 0
    out = capsys.readouterr().out
    assert '"model": "dpo"' in out and '"model": "sft"' in out


def test_merge_verifies_the_dpo_role(dpo_run, tmp_path, capsys):
    args = ["merge", "--run", str(dpo_run), "--role", "dpo", "--output", str(tmp_path / "m"), "--dtype", "float32"]
    assert main([*args, "--verify"]) == 0
    assert "within the float32 tolerance" in capsys.readouterr().out


def test_push_plans_the_dpo_role(dpo_run, capfd, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_real")
    assert main(["push", str(dpo_run), "--repo-id", "me/rlhf-run", "--role", "dpo", "--dry-run"]) == 0
    out = capfd.readouterr().out
    for name in ("dpo/adapter_model.safetensors", "dpo/adapter_config.json", "dpo/README.md"):
        assert name in out
    assert "sft/" not in out


def test_serve_lists_and_answers_with_the_dpo_role(dpo_run):
    import openai

    from lora_rlhf.inference import AdapterRegistry, GenerationOptions
    from lora_rlhf.inference.loading import base_config_from_run
    from lora_rlhf.serve import BackgroundServer, create_app

    registry = AdapterRegistry.load(base_config_from_run(str(dpo_run)))
    registry.attach_run(str(dpo_run))
    expected = registry.complete("dpo", ["sort the numbers"], GenerationOptions(max_new_tokens=6))[0].text
    with BackgroundServer(create_app(registry)) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=60)
        assert "dpo" in {m.id for m in client.models.list().data}
        answer = client.completions.create(model="dpo", prompt="sort the numbers", max_tokens=6, temperature=0)
    assert answer.choices[0].text == expected


@pytest.mark.slow
def test_two_processes_train_dpo_as_one_process_does(tmp_path):
    """The data-parallel path of issue 13 (accelerate launch, gloo): the same dpo adapter and figures."""
    import shutil

    from test_distributed import _assert_same_adapter, _launch_two

    from lora_rlhf.metrics import read_metrics

    # No dropout (two runs would draw other masks) and a high rate, so half a batch's gradient would show.
    overrides = [*DPO, "sft.lora.dropout=0", "dpo.train.learning_rate=0.01"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["sft", "--config", TINY, "--output-dir", str(one), *overrides]) == 0
    shutil.copytree(one, two)
    assert main(["dpo", "--config", TINY, "--output-dir", str(one), *overrides]) == 0
    for name in ("rankings.jsonl", "eval_rankings.jsonl"):  # the same labelled data for both
        shutil.copy(one / "data" / name, two / "data" / name)
    _launch_two("dpo", "--config", TINY, "--output-dir", str(two), *overrides)
    check_dpo_artifacts(two)
    _assert_same_adapter(one / "adapters" / "dpo", two / "adapters" / "dpo")
    rows = [read_metrics(run / "metrics" / "dpo.jsonl") for run in (one, two)]
    assert [r["step"] for r in rows[1]] == [r["step"] for r in rows[0]]
    for r1, r2 in zip(*rows):
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-5)
