"""A whole tiny pipeline with a critic-free PPO and DPO (issue 27): the run-directory contract holds without a
value role, and `lora-rlhf eval` scores the dpo role beside base, sft and ppo — also in a run without ppo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lora_rlhf.cli.main import main
from lora_rlhf.config.recipe import RECIPES

from run_contract import check_dpo_artifacts, check_run_directory

TINY = str(RECIPES / "tiny-test.yaml")
DPO = ["dpo.enabled=true", "dpo.train.batch_size=2", "dpo.train.eval_steps=2", "dpo.train.save_steps=2"]
RLOO = ["ppo.advantage=rloo", "ppo.samples_per_prompt=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("critic-free") / "run"
    assert main(["pipeline", "--config", TINY, "--output-dir", str(run), *RLOO, *DPO]) == 0
    return run


def test_a_critic_free_pipeline_meets_the_run_directory_contract_without_a_value_role(run):
    check_run_directory(run)
    check_dpo_artifacts(run)
    assert not (run / "adapters" / "value").exists()
    # a second pipeline finds every stage finished (ppo's is marked by its policy) and trains nothing again
    policy = run / "adapters" / "policy" / "adapter_model.safetensors"
    written = policy.stat().st_mtime_ns
    assert main(["pipeline", "--config", TINY, "--output-dir", str(run), *RLOO, *DPO]) == 0
    assert policy.stat().st_mtime_ns == written and not (run / "adapters" / "value").exists()


def test_eval_scores_the_dpo_role_like_ppo(run):
    results = json.loads((run / "eval.json").read_text())
    assert set(results["gold"]) == set(results["reward"]) == {"base", "sft", "ppo", "dpo"}
    assert {"dpo_vs_base", "dpo_vs_sft", "dpo_vs_ppo"} <= set(results["win_rate"]) <= set(results["win_rate_ci"])
    assert {"dpo_minus_sft", "dpo_minus_ppo"} <= set(results["gold_ci"])
    assert set(results["kl_to_sft"]) == {"ppo", "dpo"} and results["kl"] == results["kl_to_sft"]["ppo"]
    assert results["kl_to_sft"]["dpo"] >= -1e-6
    report = (run / "report.md").read_text()
    assert "| dpo |" in report and "KL(dpo ‖ sft)" in report and "dpo vs sft" in report
    assert "](plots/dpo.png)" in report and (run / "plots" / "dpo.png").is_file()


def test_eval_of_a_run_with_sft_rm_and_dpo_but_no_ppo(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints"))
    for gone in ("adapters/policy", "metrics/ppo.jsonl", "eval.json", "report.md", "plots"):
        path = copy / gone
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert main(["eval", "--run", str(copy)]) == 0
    results = json.loads((copy / "eval.json").read_text())
    assert set(results["gold"]) == {"base", "sft", "dpo"} and "kl" not in results
    assert set(results["kl_to_sft"]) == {"dpo"} and "dpo_vs_sft" in results["win_rate"]
    assert "| dpo |" in (copy / "report.md").read_text() and not (copy / "plots" / "ppo.png").exists()


def test_the_dpo_adapter_card_says_what_it_is():
    from lora_rlhf.eval.result import EvalResult
    from lora_rlhf.hub.card import model_card

    figures = EvalResult(prompts=3, gold={"sft": 0.4, "dpo": 0.6, "ppo": 0.5}, kl_to_sft={"ppo": 1.0})
    text = model_card("dpo", base_model="org/base", repo_id="me/run", subfolder="dpo", eval_result=figures)
    front = text.split("---")[1]
    assert "- dpo" in front and "- ppo" not in front
    assert "Direct Preference Optimization" in text
    assert "gold.dpo" in front and "gold.ppo" not in front  # its own figures in the indexed eval results
