"""eval.json's owner (lora_rlhf.eval.result): a round trip, one-line errors, and files written before issue 26.

tests/fixtures/eval_json_v1/ holds two eval.json files in the layout of the code before issue 26 (a sampled eval
with best-of-N from its samples, and a greedy one), with the report sections and ablation rows that code made
of them: the readers must still make the same.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.eval import report
from lora_rlhf.eval.result import (
    BestOfN,
    EvalResult,
    IFEvalSection,
    PairAccuracy,
    RMAccuracy,
    read_eval_result,
    write_eval_result,
)
from lora_rlhf.paths import RunLayout
from lora_rlhf.pipeline.ablation import table

V1 = Path(__file__).parent / "fixtures" / "eval_json_v1"


def _full() -> EvalResult:
    models = ("base", "sft", "ppo")
    return EvalResult(
        prompts=8,
        temperature=1.0,
        samples_per_prompt=2,
        confidence=0.9,
        bootstrap_samples=200,
        gold={m: 0.25 * i for i, m in enumerate(models)},
        gold_mean_ci={m: (0.25 * i - 0.1, 0.25 * i + 0.1) for i, m in enumerate(models)},
        gold_ci={"sft_minus_base": (0.1, 0.4), "ppo_minus_base": (0.3, 0.7), "ppo_minus_sft": (0.0, 0.5)},
        reward={m: float(i) for i, m in enumerate(models)},
        reward_mean_ci={m: (i - 0.5, i + 0.5) for i, m in enumerate(models)},
        win_rate={"sft_vs_base": 0.75, "ppo_vs_base": 1.0, "ppo_vs_sft": 0.625},
        win_rate_ci={"sft_vs_base": (0.5, 1.0), "ppo_vs_base": (1.0, 1.0), "ppo_vs_sft": (0.375, 0.875)},
        win_rate_judge="gold",
        rm_accuracy=RMAccuracy("rankings", PairAccuracy(0.6, (0.4, 0.8), 10), PairAccuracy(0.7, (0.5, 0.9), 9), 4, 1),
        kl_to_sft={"ppo": 1.5, "dpo": 0.5},
        best_of_n=BestOfN(2, 1.0, 0.5, 0.625, (0.5, 0.75), 0.375, 4, True, 0.5, (0.1, 0.4), (0.0, 0.25)),
        lm_loss={m: 3.5 for m in models},
        ifeval=IFEvalSection(
            prompts=3,
            accuracy={"base": {"prompt_strict": 1 / 3, "prompt_loose": 2 / 3}},
            headline={"base": 0.5},
            accuracy_ci={"base_strict": (0.0, 1.0)},
            diff={},
            diff_ci={},
            per_instruction={"base": {"punctuation:no_comma": {"count": 2, "strict": 0.5, "loose": 1.0}}},
            max_new_tokens=64,
            decoding="greedy",
            chat_template="the tokenizer's, one user turn",
            responses={"base": "ifeval/base.jsonl"},
            hit_max_new_tokens={"base": 0},
        ),
    )


def test_round_trip_keeps_every_field_and_the_documented_layout(tmp_path):
    result = _full()
    path = write_eval_result(tmp_path / "eval.json", result)
    assert read_eval_result(path) == result
    saved = json.loads(path.read_text())
    assert list(saved) == [
        "prompts",
        "temperature",
        "samples_per_prompt",
        "confidence",
        "bootstrap_samples",
        "gold",
        "gold_mean_ci",
        "gold_ci",
        "reward",
        "reward_mean_ci",
        "win_rate",
        "win_rate_ci",
        "win_rate_judge",
        "rm_accuracy_source",
        "rm_accuracy_rows",
        "rm_accuracy_skipped_rows",
        "rm_accuracy",
        "rm_accuracy_ci",
        "rm_accuracy_pairs",
        "rm_accuracy_gold",
        "rm_accuracy_gold_ci",
        "rm_accuracy_gold_pairs",
        "kl_to_sft",
        "kl",
        "best_of_n",
        "best_of_n_ci",
        "lm_loss",
        "ifeval",
    ]
    assert saved["kl"] == 1.5 and saved["gold_ci"]["ppo_minus_sft"] == [0.0, 0.5]
    assert saved["best_of_n"] == {
        "n": 2,
        "temperature": 1.0,
        "reward": 0.5,
        "gold": 0.625,
        "gold_ci": [0.5, 0.75],
        "gold_random_sample": 0.375,
        "prompts": 4,
        "candidates_from_eval_samples": True,
        "gold_sft": 0.5,
    }
    assert saved["best_of_n_ci"] == {"bon_minus_sample": [0.1, 0.4], "bon_minus_sft": [0.0, 0.25]}
    assert saved["ifeval"]["per_instruction"]["base"]["punctuation:no_comma"]["count"] == 2
    assert not list(tmp_path.glob(".eval.json.tmp-*"))  # written atomically: no temporary left


def test_what_is_not_measured_is_left_out_and_a_missing_accuracy_is_null(tmp_path):
    result = EvalResult(
        prompts=2,
        temperature=0.0,
        samples_per_prompt=1,
        confidence=0.95,
        bootstrap_samples=100,
        rm_accuracy=RMAccuracy("metrics", PairAccuracy(None)),
    )
    path = write_eval_result(tmp_path / "eval.json", result)
    assert json.loads(path.read_text())["rm_accuracy"] is None
    assert set(json.loads(path.read_text())) == {
        "prompts",
        "temperature",
        "samples_per_prompt",
        "confidence",
        "bootstrap_samples",
        "rm_accuracy_source",
        "rm_accuracy",
    }
    assert read_eval_result(path) == result and read_eval_result(path).kl is None
    no_pairs = RMAccuracy("rankings", PairAccuracy(None, None, 0), rows=0, skipped_rows=3)
    assert read_eval_result(write_eval_result(path, EvalResult(rm_accuracy=no_pairs))).rm_accuracy == no_pairs
    only_ifeval = EvalResult(ifeval=_full().ifeval)  # `eval --benchmark` on a run never evaluated
    assert read_eval_result(write_eval_result(path, only_ifeval)) == only_ifeval


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda d: d.update(prompts="eight"), "prompts"),
        (lambda d: d["gold"].update(ppo="high"), "gold.ppo"),
        (lambda d: d["gold_ci"].update(ppo_minus_sft=[0.5]), "gold_ci.ppo_minus_sft"),
        (lambda d: d.update(win_rate_judge="labeler"), "win_rate_judge"),
        (lambda d: d.update(rm_accuracy_source="guess"), "rm_accuracy_source"),
        (lambda d: d.pop("rm_accuracy_pairs"), "rm_accuracy_pairs"),
        (lambda d: d["best_of_n"].pop("n"), "best_of_n.n"),
        (lambda d: d["best_of_n"].update(candidates_from_eval_samples="yes"), "best_of_n.candidates_from_eval_samples"),
        (lambda d: d["ifeval"].pop("accuracy"), "ifeval.accuracy"),
        (lambda d: d["ifeval"]["accuracy"]["base"].update(prompt_loose=None), "ifeval.accuracy.base.prompt_loose"),
        (lambda d: d.pop("prompts"), "prompts"),
    ],
)
def test_a_malformed_field_is_one_line_naming_the_file_and_the_key(tmp_path, change, key):
    data = json.loads(json.dumps(_full().to_json()))
    change(data)
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(data))
    with pytest.raises(LoraRlhfError) as caught:
        read_eval_result(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: {key} ") and "rerun `lora-rlhf eval`" in message


def test_a_missing_or_broken_file_is_one_line(tmp_path):
    with pytest.raises(LoraRlhfError, match="eval.json does not exist; run `lora-rlhf eval` first"):
        read_eval_result(tmp_path / "eval.json")
    (tmp_path / "eval.json").write_text('{"prompts": 3,')
    with pytest.raises(LoraRlhfError, match=r"eval.json is not readable JSON \(.*\); rerun") as caught:
        read_eval_result(tmp_path / "eval.json")
    assert "\n" not in str(caught.value)
    (tmp_path / "eval.json").write_text("[1, 2]")
    with pytest.raises(LoraRlhfError, match="the file must be a JSON object, got list"):
        read_eval_result(tmp_path / "eval.json")


def test_an_ifeval_section_without_models_is_reported_without_its_plot(tmp_path, caplog):
    # plot_accuracies divided by the number of models (ZeroDivisionError with none); it now skips the plot, as the
    # report's other plots do with nothing to draw, and logs why.
    empty = IFEvalSection(prompts=0, accuracy={}, headline={}, accuracy_ci={}, diff={}, diff_ci={}, per_instruction={})
    with caplog.at_level(logging.INFO, logger="lora_rlhf.eval.ifeval_report"):
        text = report.write_report(tmp_path, EvalResult(ifeval=empty), [], {}, 0).read_text()
    assert "## IFEval" in text and "IFEval accuracy by model" not in text
    assert not RunLayout(tmp_path).plot("ifeval").exists()
    assert "IFEval plot skipped: no model's accuracies to draw" in caplog.text


def test_a_file_written_before_issue_26_reads_with_its_baselines_renamed():
    sampled = read_eval_result(V1 / "sampled.json")
    bon = sampled.best_of_n
    assert bon.gold_random_sample == 0.4375  # was best_of_n.gold_sft_sample
    assert bon.gold_sft == 0.5625  # was best_of_n.gold_sft_samples
    assert bon.gold_minus_sample_ci == (0.125, 0.375) and bon.gold_minus_sft_ci == (0.0, 0.25)
    assert sampled.kl_to_sft == {"ppo": 1.25} and sampled.kl == 1.25  # `kl` alone: ppo's, from before kl_to_sft
    gold = sampled.rm_accuracy.gold
    assert gold == PairAccuracy(None, None, 0) and sampled.rm_accuracy.labels == PairAccuracy(0.6, (0.45, 0.75), 20)
    greedy = read_eval_result(V1 / "greedy.json")
    assert greedy.best_of_n.gold_sft == 0.45  # was best_of_n.gold_sft_greedy
    assert greedy.rm_accuracy == RMAccuracy("metrics", PairAccuracy(0.7))
    written = greedy.to_json()["best_of_n"]
    assert "gold_sft_greedy" not in written and "gold_sft_sample" not in written and written["gold_sft"] == 0.45
    assert EvalResult.from_json({"prompts": 3, "rm_accuracy": 0.8}).rm_accuracy.source == "metrics"


@pytest.mark.parametrize("name", ["sampled", "greedy"])
def test_readers_make_what_the_code_before_issue_26_made_of_the_same_file(name):
    result = read_eval_result(V1 / f"{name}.json")
    sections = [report.results_table(result), *report.difference_section(result)]
    sections += report.rm_accuracy_lines(result) + report.extra_lines(result)
    assert "\n".join(sections) + "\n" == (V1 / f"{name}.report.md").read_text()
    rows = [table.sft_row(result), table.best_of_n_row(result), table.method_row("ppo", result, None)]
    expected = json.loads((V1 / f"{name}.ablation_rows.json").read_text())
    if name == "sampled":  # a file with `kl` alone: the PPO row now reads it (the old reader left it blank)
        assert expected[2]["kl"] is None
        expected[2]["kl"] = 1.25
    assert json.loads(json.dumps(rows)) == expected
