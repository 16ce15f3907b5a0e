"""A run directory is data, not code (issue 12): its recipe.yaml cannot switch on trust_remote_code for the
commands that read it (generate, serve, eval --run; merge --run, export-reward and ablate in tests/test_ablate.py),
nor can a recipe file for training or plan (issue 29); only the command line's --trust-remote-code can, and a
recipe that asks is warned about."""

from __future__ import annotations

import logging

import pytest
import yaml

from lora_rlhf.cli.main import main
from lora_rlhf.inference.loading import base_config_from_run
from lora_rlhf.pipeline import runner


@pytest.fixture()
def remote_code_run(tmp_path):
    """A run directory, as downloaded from anywhere, whose recipe asks for the base's own Python code."""
    run = tmp_path / "run"
    run.mkdir()
    model = {"name_or_path": str(tmp_path / "some-base"), "quantization": "none", "trust_remote_code": True}
    (run / "recipe.yaml").write_text(yaml.safe_dump({"model": model}))
    return run


def test_a_run_recipe_cannot_turn_on_remote_code(remote_code_run, caplog):
    with caplog.at_level(logging.WARNING, logger="lora_rlhf.inference.loading"):
        config = base_config_from_run(remote_code_run)
    assert config.trust_remote_code is False
    assert "trust_remote_code" in caplog.text and "--trust-remote-code" in caplog.text


def test_the_command_line_flag_turns_it_on(remote_code_run, caplog):
    with caplog.at_level(logging.WARNING, logger="lora_rlhf.inference.loading"):
        assert base_config_from_run(remote_code_run, trust_remote_code=True).trust_remote_code is True
        assert base_config_from_run(remote_code_run, trust_remote_code=None).trust_remote_code is False
    assert caplog.text.count("cannot turn on") == 1  # no warning when the flag was given


@pytest.fixture()
def evaluated(monkeypatch):
    """The recipes `lora-rlhf eval` would evaluate with, instead of loading a model."""
    seen = []

    def fake_run_stages(recipe, run, stages, **_):
        seen.append(recipe)
        return [runner.StageResult("eval", "evaluated", 0.0, {})]

    monkeypatch.setattr(runner, "run_stages", fake_run_stages)
    return seen


def test_eval_of_a_run_takes_remote_code_from_the_flag_only(remote_code_run, evaluated, caplog):
    with caplog.at_level(logging.WARNING):
        assert main(["eval", "--run", str(remote_code_run)]) == 0
    assert evaluated[-1].model.trust_remote_code is False and "cannot turn on" in caplog.text
    assert main(["eval", "--run", str(remote_code_run), "--trust-remote-code"]) == 0
    assert evaluated[-1].model.trust_remote_code is True


@pytest.mark.parametrize("command", ["sft", "pipeline"])
def test_a_recipe_file_cannot_turn_on_remote_code_for_training(command, tmp_path, evaluated, caplog, capsys):
    """Issue 29: `sft --config recipe.yaml` with model.trust_remote_code: true imported a model folder's Python."""
    recipe = tmp_path / "downloaded.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"name_or_path": "tiny:llama", "trust_remote_code": True}}))
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        assert main([command, "--config", str(recipe), "--output-dir", str(out)]) == 0
    assert evaluated[-1].model.trust_remote_code is False
    assert f"{recipe} sets model.trust_remote_code" in caplog.text and "--trust-remote-code" in caplog.text
    assert yaml.safe_load((out / "recipe.yaml").read_text())["model"]["trust_remote_code"] is False
    caplog.clear()
    assert main([command, "--config", str(recipe), "--output-dir", str(out), "--trust-remote-code"]) == 0
    assert evaluated[-1].model.trust_remote_code is True and "cannot turn on" not in caplog.text
    assert yaml.safe_load((out / "recipe.yaml").read_text())["model"]["trust_remote_code"] is False  # never recorded
    with caplog.at_level(logging.WARNING):
        assert main([command, "--config", str(recipe), "--output-dir", str(out), "model.trust_remote_code=true"]) == 0
    assert evaluated[-1].model.trust_remote_code is False and "cannot turn on" in caplog.text


def test_plan_tells_a_recipe_that_asks_for_remote_code(tmp_path, tiny_llama, caplog, capsys):
    """Issue 29, one rule everywhere: plan ignored the recipe's model.trust_remote_code without a word."""
    recipe = tmp_path / "downloaded.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"name_or_path": "tiny:llama", "trust_remote_code": True}}))
    with caplog.at_level(logging.WARNING):
        main(["plan", "--config", str(recipe), "--model-config", tiny_llama])
    assert f"{recipe} sets model.trust_remote_code" in caplog.text and "--trust-remote-code" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        main(["plan", "--config", str(recipe), "--model-config", tiny_llama, "--trust-remote-code"])
    assert "cannot turn on" not in caplog.text


@pytest.mark.parametrize(
    "command", [["merge", "--run", "{run}", "-o", "{out}"], ["export-reward", "{run}", "-o", "{out}"]]
)
def test_merge_and_export_tell_a_run_that_asks_for_remote_code(command, remote_code_run, tmp_path, caplog):
    """Issue 29, one rule everywhere: these read only the run's base name and ignored its ask without a word."""
    args = [a.format(run=remote_code_run, out=tmp_path / "out") for a in command]
    with caplog.at_level(logging.WARNING):
        assert main(args) == 2  # the run holds no adapters: refused after the warning
    assert "sets model.trust_remote_code" in caplog.text and "--trust-remote-code" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main([*args, "--trust-remote-code"]) == 2
    assert "cannot turn on" not in caplog.text
