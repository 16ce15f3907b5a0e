"""The IFEval-style recipe's machinery on the tiny model: data by code, sft -> rm -> ppo -> eval with IFEval,
and `eval --benchmark ifeval` adding the section to a finished run (numbers mean nothing at this size)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_rlhf.cli.main import main
from lora_rlhf.config.recipe import RECIPES
from lora_rlhf.ifeval.checkers import check
from lora_rlhf.ifeval.judge import TaskBook

from run_contract import check_run_directory

TINY = str(RECIPES / "tiny-test.yaml")
IFEVAL_TASK = [
    "demo.task=ifeval",
    "demo.max_new_tokens=16",
    "sft.max_length=512",
    "rm.max_length=512",
    "ppo.max_prompt_length=500",
    "eval.ifeval.enabled=true",
    "eval.ifeval.max_prompts=6",
    "eval.ifeval.max_new_tokens=8",
]


@pytest.fixture(scope="module")
def ifeval_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ifeval") / "run"
    assert main(["pipeline", "--config", TINY, "--output-dir", str(run), *IFEVAL_TASK]) == 0
    return run


def test_pipeline_writes_the_ifeval_section_tables_and_responses(ifeval_run):
    check_run_directory(ifeval_run)
    section = json.loads((ifeval_run / "eval.json").read_text())["ifeval"]
    assert section["prompts"] == 6
    assert set(section["accuracy"]) == {"base", "sft", "ppo"}
    for scores in section["accuracy"].values():
        assert set(scores) == {"prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose"}
        assert scores["prompt_strict"] <= scores["prompt_loose"]
    assert "ppo_minus_sft_loose" in section["diff_ci"]
    for name in ("base", "sft", "ppo"):
        rows = [json.loads(line) for line in (ifeval_run / "ifeval" / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == 6 and set(rows[0]) == {"prompt", "response"}
    report = (ifeval_run / "report.md").read_text()
    assert "## IFEval" in report and "| instruction | n |" in report
    assert (ifeval_run / "plots" / "ifeval.png").is_file()


def test_demonstrations_follow_every_instruction_of_their_prompt(ifeval_run):
    book = TaskBook.read(ifeval_run / "data" / "ifeval_tasks.jsonl")
    rows = [json.loads(line) for line in (ifeval_run / "data" / "demonstrations.jsonl").read_text().splitlines()]
    assert rows
    for row in rows:
        text = row["prompt"] if isinstance(row["prompt"], str) else row["prompt"][-1]["content"]
        task = book.task(text)
        assert all(check(task.prompt, task.instruction_ids, task.kwargs, row["completion"]).strict)
    rankings = [json.loads(line) for line in (ifeval_run / "data" / "rankings.jsonl").read_text().splitlines()]
    assert rankings and all(sorted(r["ranks"]) == list(range(len(r["responses"]))) for r in rankings)


def test_eval_benchmark_adds_ifeval_to_a_finished_run(ifeval_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(ifeval_run, run)
    results = json.loads((run / "eval.json").read_text())
    del results["ifeval"]
    (run / "eval.json").write_text(json.dumps(results))
    assert main(["eval", "--run", str(run), "--benchmark", "ifeval", "eval.ifeval.max_prompts=3"]) == 0
    merged = json.loads((run / "eval.json").read_text())
    assert merged["ifeval"]["prompts"] == 3
    assert merged["gold"] == results["gold"]  # what eval measured before stays
    assert "## IFEval" in (run / "report.md").read_text()
