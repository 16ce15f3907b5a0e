"""eval_samples.jsonl: written and read back by its one owner; files from before issue 27 still read."""

from __future__ import annotations

import json

import pytest

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.eval.samples import EvalSamples, read_eval_samples, write_eval_samples


def test_rows_round_trip_with_each_models_gold_per_prompt(tmp_path):
    path = tmp_path / "eval_samples.jsonl"
    prompts = ["a", [{"role": "user", "content": "b"}]]
    answers = {"sft": ["a1", "a2", "b1", "b2"], "ppo": ["x1", "x2", "y1", "y2"]}
    write_eval_samples(path, prompts, answers, 2, gold={"sft": [0.5, 0.25], "ppo": [1, 0]}, best_of_n_gold=[0.75])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0] == {
        "prompt": "a",
        "sft": ["a1", "a2"],
        "ppo": ["x1", "x2"],
        "gold": {"sft": 0.5, "ppo": 1.0, "best_of_n": 0.75},
    }
    assert rows[1]["gold"] == {"sft": 0.25, "ppo": 0.0}  # best-of-N ran on the first prompt only
    assert read_eval_samples(path) == EvalSamples(
        prompts,
        {"sft": [["a1", "a2"], ["b1", "b2"]], "ppo": [["x1", "x2"], ["y1", "y2"]]},
        {"sft": [0.5, 0.25], "ppo": [1.0, 0.0]},
        [0.75],
    )


def test_a_file_from_before_issue_27_reads_without_gold(tmp_path):
    path = tmp_path / "eval_samples.jsonl"
    path.write_text(json.dumps({"prompt": "a", "base": "x", "sft": "y"}) + "\n")
    assert read_eval_samples(path) == EvalSamples(["a"], {"base": [["x"]], "sft": [["y"]]})


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"prompt": "a", "sft": "y", "gold": {"sft": "high"}}], "row 1: gold.sft must be a number"),
        ([{"prompt": "a", "sft": "y", "gold": {"sft": 1}}, {"prompt": "b", "sft": "z"}], "row 2: gold.sft"),
        ([{"sft": "y"}], "every row must be an object with a prompt"),
    ],
)
def test_a_malformed_file_is_a_one_line_error_naming_it(tmp_path, rows, message):
    path = tmp_path / "eval_samples.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(LoraRlhfError, match=message) as error:
        read_eval_samples(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(LoraRlhfError, match="does not exist"):
        read_eval_samples(tmp_path / "missing.jsonl")
