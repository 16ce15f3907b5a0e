"""The preference formats through the rest of the toolkit: the rm stage from the CLI, Hub rows, max_rows, precheck."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lora_rlhf.cli.main import main
from lora_rlhf.config.recipe import RECIPES
from lora_rlhf.data.rows import parse_rows
from lora_rlhf.data.sources import DatasetSpec, load_rows
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.metrics import read_metrics

FIXTURES = Path(__file__).parent / "fixtures"
TINY = str(RECIPES / "tiny-test.yaml")


def test_the_rm_stage_trains_from_an_oasst_trees_file_on_the_tiny_recipe(tmp_path):
    data = shutil.copy(FIXTURES / "oasst_trees.jsonl", tmp_path / "oasst.jsonl")
    run = tmp_path / "run"
    args = ["demo.enabled=false", "rm.init=fresh", f"rm.data.path={data}", "rm.data.format=oasst_trees"]
    assert main(["rm", "--config", TINY, "--output-dir", str(run), *args, "rm.data.oasst.lang=[en, de]"]) == 0
    rows = read_metrics(run / "metrics" / "rm.jsonl")
    assert rows and all({"loss", "accuracy"} <= row.keys() for row in rows)
    assert sum(row.get("prompts", 0) for row in rows if row.get("split") != "eval") >= 2  # 3 rankings, 1 held out
    assert (run / "adapters" / "reward" / "head.safetensors").is_file()


def test_a_bad_row_of_a_preference_file_fails_before_the_model_loads(tmp_path, capsys):
    rows = [json.loads(line) for line in (FIXTURES / "nectar.jsonl").read_text().splitlines()]
    rows[1]["answers"][0]["rank"] = "best"
    data = tmp_path / "nectar.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = ["demo.enabled=false", "rm.init=fresh", "rm.on_bad_row=error", f"rm.data.path={data}"]
    assert main(["rm", "--config", TINY, "--output-dir", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert "nectar.jsonl, line 2: field 'answers[0].rank' is 'best', expected a number or null" in err


def test_hub_rows_go_through_the_same_readers_and_max_rows_counts_rankings(monkeypatch):
    import datasets

    rows = [json.loads(line) for line in (FIXTURES / "ultrafeedback.jsonl").read_text().splitlines()]
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: datasets.Dataset.from_list(rows))
    loaded = load_rows(DatasetSpec(path="openbmb/UltraFeedback", max_rows=1))
    assert len(loaded) == 1 and loaded.places == ["row 0 (ranks from 'overall_score')"]
    assert loaded[0]["ranks"] == [1, 0, 1, 2]
    wrong = load_rows(DatasetSpec(path="openbmb/UltraFeedback", format="nectar"))  # a format that does not fit
    with pytest.raises(LoraRlhfError, match=r"^openbmb/UltraFeedback, row 0: missing field 'answers'$"):
        parse_rows(wrong, lambda row: row, "openbmb/UltraFeedback", "error")


def test_a_preference_file_serves_as_prompts_through_its_rankings_prompts():
    from lora_rlhf.data.prompts import load_prompts

    prompts, report = load_prompts(DatasetSpec(path=str(FIXTURES / "nectar.jsonl")))
    assert report.kept == 2 and prompts[1][-1] == {"role": "user", "content": "tell me a joke"}
