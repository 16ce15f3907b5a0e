"""The embedded demo's tasks, gold judge, labeler and data files (pure Python, no model)."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from lora_rlhf.demo import datasets as demo_data
from lora_rlhf.demo.judge import gold_score, gold_scores
from lora_rlhf.demo.labeler import Labeler, expected_disagreement, mallows_order, mallows_phi
from lora_rlhf.demo.tasks import FAMILIES, make_task, parse_task, sample_tasks, split_of
from lora_rlhf.errors import LoraRlhfError


def test_sample_tasks_is_deterministic_per_seed_and_covers_every_family():
    first, again, other = sample_tasks(30, seed=3), sample_tasks(30, seed=3), sample_tasks(30, seed=4)
    assert first == again
    assert [t.prompt for t in first] != [t.prompt for t in other]
    assert {t.family for t in first} == set(FAMILIES)
    assert len(FAMILIES) >= 6
    assert len({t.prompt for t in first}) == 30


def test_families_filter_and_unknown_family_error():
    assert {t.family for t in sample_tasks(8, 0, families=["sort", "json"])} == {"sort", "json"}
    with pytest.raises(LoraRlhfError, match="demo.families"):
        sample_tasks(2, 0, families=["sort", "poetry"])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_parse_task_round_trips_every_family(family):
    for task in sample_tasks(20, seed=11, families=[family]):
        assert parse_task(task.prompt) == task
        assert parse_task("  " + task.prompt + "\n") == task
    assert parse_task("Tell me a story about a dragon.") is None


def test_reference_answers_are_right():
    assert make_task("sort", {"numbers": [5, 12, 1]}).answer == "1, 5, 12"
    assert make_task("reverse", {"words": ["a", "b", "c"]}).answer == "c b a"
    assert make_task("arithmetic", {"a": 12, "op": "-", "b": 30}).answer == "-18"
    assert make_task("count", {"letter": "r", "words": ["river", "tiger"]}).answer == "3"
    assert make_task("uppercase", {"words": ["green", "tea"]}).answer == "GREEN TEA"
    assert make_task("lowercase", {"words": ["green", "tea"]}).prompt.startswith(
        "Write this in lowercase letters: GREEN TEA."
    )
    assert make_task("lowercase", {"words": ["green", "tea"]}).answer == "green tea"
    assert make_task("capitalize", {"words": ["green", "tea"]}).answer == "Green Tea"
    assert make_task("dashes", {"words": ["green", "tea", "cup"]}).answer == "green-tea-cup"
    assert make_task("repeat", {"word": "tea", "times": 3}).answer == "tea tea tea"
    assert json.loads(make_task("json", {"pairs": {"city": "Oslo", "name": "Ana"}}).answer) == {
        "city": "Oslo",
        "name": "Ana",
    }


def test_train_and_eval_splits_are_disjoint_whatever_the_seed():
    train = {t.prompt for seed in range(3) for t in sample_tasks(100, seed, split="train")}
    held_out = {t.prompt for t in sample_tasks(60, seed=0, split="eval")}
    assert train.isdisjoint(held_out)
    assert all(split_of(p) == "eval" for p in held_out)


def test_gold_judge_gives_one_to_the_demonstration_and_less_to_corruptions():
    labeler = Labeler(disagreement=0.0)
    for task in sample_tasks(24, seed=5):
        assert gold_score(task.prompt, labeler.demonstrate(task.prompt)) == 1.0
        for bad in ("", "I do not know.", task.answer + " and some chatter after it"):
            assert 0.0 <= gold_score(task.prompt, bad) < 1.0


@pytest.mark.parametrize(
    "params, family, right, partly, wrong",
    [
        ({"numbers": [40, 10, 30, 20]}, "sort", "10, 20, 30, 40", "10, 20, 40, 30", "99, 98"),
        (
            {"words": ["apple", "river", "stone", "cloud"]},
            "reverse",
            "cloud stone river apple",
            "cloud stone apple river",
            "banana",
        ),
        ({"a": 40, "op": "+", "b": 25}, "arithmetic", "65", "63", "12"),
        ({"letter": "e", "words": ["green", "tree", "lemon"]}, "count", "5", "4", "40"),
        ({"words": ["green", "river"]}, "uppercase", "GREEN RIVER", "green river", "blue sky"),
        ({"words": ["green", "river"]}, "lowercase", "green river", "GREEN river", "blue sky"),
        ({"words": ["green", "river"]}, "capitalize", "Green River", "green river", "blue sky"),
        ({"words": ["green", "river", "stone"]}, "dashes", "green-river-stone", "green river stone", "blue sky"),
        ({"word": "tea", "times": 3}, "repeat", "tea tea tea", "tea tea", "coffee"),
        (
            {"pairs": {"city": "Oslo", "name": "Ana"}},
            "json",
            '{"city": "Oslo", "name": "Ana"}',
            '{"city": "Oslo", "name": "Leo"}',
            "city Oslo",
        ),
    ],
)
def test_gold_judge_is_graded(params, family, right, partly, wrong):
    prompt = make_task(family, params).prompt
    scores = gold_scores([prompt] * 3, [right, partly, wrong])
    assert scores[0] == 1.0
    assert 0.0 <= scores[2] < scores[1] < scores[0]


def test_gold_judge_hand_computed_values_and_brevity():
    sort = make_task("sort", {"numbers": [3, 1, 2]}).prompt
    # Numbers 1, 2 only: multiset F1 = 2*2/(3+2) = 0.8, in place 2/3 -> content 0.4 + 1/3; brevity 1.
    assert gold_score(sort, "1, 2") == pytest.approx(0.4 + 1 / 3)
    # Right numbers in order inside a 15-char reply to a 7-char answer: brevity (7 + 4) / 15.
    assert gold_score(sort, "Sorted: 1, 2, 3") == pytest.approx(1.0 * (0.8 + 0.2 * 11 / 15))
    add = make_task("arithmetic", {"a": 10, "op": "+", "b": 10}).prompt
    # |21 - 20| / max(3, 5) = 0.2 off -> content 0.8, brief -> score 0.8.
    assert gold_score(add, "21") == pytest.approx(0.8)
    assert gold_score(add, "The answer is twenty... no: 20") > gold_score(add, "The answer is 19")
    assert gold_score(add, "20") > gold_score(add, "Sure, 10 + 10 = 20") > gold_score(add, "Sure, 10 + 10 = 17")


def test_gold_judge_new_families_hand_computed():
    dashes = make_task("dashes", {"words": ["green", "river", "stone"]}).prompt
    # Right words (ratio 1) but one item "river stone": dash items [green, river stone] match 1 of 3 + 2 -> 2/5.
    assert gold_score(dashes, "green-river stone") == pytest.approx(0.5 + 0.5 * 2 / 5)
    repeat = make_task("repeat", {"word": "tea", "times": 3}).prompt
    # Five copies for three: multiset F1 = 2*3/(3+5) = 0.75; 19 chars for an 11-char answer: brevity 15/19.
    assert gold_score(repeat, "tea tea tea tea tea") == pytest.approx(0.75 * (0.8 + 0.2 * 15 / 19))
    lower = make_task("lowercase", {"words": ["green", "river"]}).prompt
    # Words right case-blind (0.5), one of two in the asked-for case: exact ratio 2*1/4 -> 0.25.
    assert gold_score(lower, "green RIVER") == pytest.approx(0.75)


def test_gold_judge_rejects_unknown_prompts():
    with pytest.raises(LoraRlhfError, match="no demo task"):
        gold_score("Write a haiku.", "ok")


@pytest.mark.parametrize("k", [2, 4, 7])
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.27, 0.5])
def test_mallows_phi_hits_the_disagreement_rate(k, rate):
    assert expected_disagreement(mallows_phi(rate, k), k) == pytest.approx(rate, abs=1e-9)


def test_mallows_sampling_matches_its_expected_disagreement():
    rng, k, draws = random.Random(0), 5, 3000
    phi = mallows_phi(0.27, k)
    flipped = 0
    for _ in range(draws):
        order = mallows_order(list(range(k)), phi, rng)
        position = {item: i for i, item in enumerate(order)}
        flipped += sum(position[a] > position[b] for a, b in itertools.combinations(range(k), 2))
    assert flipped / (draws * 10) == pytest.approx(0.27, abs=0.015)


def _graded_responses(task):
    """Four responses with distinct gold scores, best first."""
    return [task.answer, task.answer + " " + task.answer, "Well. " * 3 + task.answer + " ok " * 20, ""]


def test_labeler_ranks_are_permutations_and_follow_gold_at_zero_disagreement():
    labeler = Labeler(disagreement=0.0, seed=1)
    for task in sample_tasks(12, seed=2):
        responses = _graded_responses(task)
        gold = gold_scores([task.prompt] * 4, responses)
        ranks = labeler.rank(task.prompt, responses)
        assert sorted(ranks) == [0, 1, 2, 3]
        for i, j in itertools.combinations(range(4), 2):
            if gold[i] != gold[j]:
                assert (ranks[i] < ranks[j]) == (gold[i] > gold[j])


def test_labeler_ties_are_broken_at_random():
    task = sample_tasks(1, seed=0)[0]
    labeler = Labeler(disagreement=0.0, seed=0)
    firsts = {labeler.rank(task.prompt, ["", "  \n", "nonsense"]).index(0) for _ in range(40)}
    assert firsts == {0, 1, 2}


def test_labeler_pairwise_agreement_is_one_minus_disagreement():
    labeler = Labeler(disagreement=0.27, seed=7)
    agree = total = 0
    for task in sample_tasks(600, seed=9):
        responses = _graded_responses(task)
        gold = gold_scores([task.prompt] * 4, responses)
        ranks = labeler.rank(task.prompt, responses)
        for i, j in itertools.combinations(range(4), 2):
            if gold[i] != gold[j]:
                total += 1
                agree += (ranks[i] < ranks[j]) == (gold[i] > gold[j])
    assert agree / total == pytest.approx(0.73, abs=0.02)


def test_labeler_is_deterministic_per_seed_and_validates_the_rate():
    task = sample_tasks(1, seed=0)[0]
    responses = _graded_responses(task)
    runs = [[Labeler(0.4, seed=s).rank(task.prompt, responses) for _ in range(1)] for s in (3, 3)]
    assert runs[0] == runs[1]
    with pytest.raises(LoraRlhfError, match="demo.disagreement"):
        Labeler(disagreement=0.7)


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_written_files_parse_in_the_design_formats(tmp_path):
    demos = _read_jsonl(demo_data.write_demonstrations(tmp_path / "d.jsonl", 18, seed=1))
    prompts = _read_jsonl(demo_data.write_prompts(tmp_path / "p.jsonl", 12, seed=1))
    held_out = _read_jsonl(demo_data.write_eval_prompts(tmp_path / "e.jsonl", 12, seed=1))
    assert len(demos) == 18 and all(set(row) == {"prompt", "completion"} for row in demos)
    assert all(gold_score(row["prompt"], row["completion"]) == 1.0 for row in demos)
    assert all(set(row) == {"prompt"} for row in prompts + held_out)
    train = {row["prompt"] for row in demos + prompts}
    assert train.isdisjoint(row["prompt"] for row in held_out)
    assert _read_jsonl(demo_data.write_demonstrations(tmp_path / "again.jsonl", 18, seed=1)) == demos


def test_ranking_rows_dedupe_and_skip_prompts_without_two_distinct_responses(tmp_path):
    tasks = sample_tasks(3, seed=4)
    samples = [
        [tasks[0].answer, " " + tasks[0].answer, "wrong", "wrong\n", ""],
        ["same", "same", "same ", "same"],
        [tasks[2].answer, "x", "y", "z"],
    ]
    rows = demo_data.ranking_rows([t.prompt for t in tasks], samples, Labeler(disagreement=0.0))
    assert [row["prompt"] for row in rows] == [tasks[0].prompt, tasks[2].prompt]
    assert rows[0]["responses"] == [tasks[0].answer, "wrong", ""]
    assert rows[0]["ranks"][0] == 0 and sorted(rows[0]["ranks"]) == [0, 1, 2]
    assert all(len(row["responses"]) == len(row["ranks"]) for row in rows)
    written = _read_jsonl(demo_data.write_jsonl(tmp_path / "r.jsonl", rows))
    assert written == rows


def test_general_text_for_ptx_and_held_out_lm_loss_is_disjoint_prose():
    from lora_rlhf.demo.text import text_rows

    ptx, held = text_rows("ptx", 1000), text_rows("heldout", 1000)
    assert len(ptx) >= 32 and len(held) >= 32
    assert not {r["text"] for r in ptx} & {r["text"] for r in held}  # the alignment tax is measured on unseen text
    assert all(not r["text"].startswith(("Sort", "Reverse", "What is")) for r in ptx + held)


def test_ptx_text_rows_train_every_token_and_demonstrations_only_the_completion(tiny_llama):
    from lora_rlhf.data.demonstrations import IGNORE_INDEX
    from lora_rlhf.models.base import BaseModelConfig, load_tokenizer
    from lora_rlhf.ppo.data import encode_ptx_row

    tokenizer = load_tokenizer(BaseModelConfig(tiny_llama))
    text = encode_ptx_row({"text": "the quick brown fox jumps over the lazy dog"}, tokenizer, 64)
    assert text.labels == text.input_ids and not text.truncated
    demo = encode_ptx_row({"prompt": "say hi", "completion": "hi"}, tokenizer, 64)
    assert demo.labels[0] == IGNORE_INDEX and demo.labels[-1] == demo.input_ids[-1]


def test_a_demo_system_prompt_is_written_as_a_conversational_prompt_and_ranked_by_the_user_text(tmp_path):
    from lora_rlhf.config.recipe import RecipeConfig
    from lora_rlhf.data.prompts import load_prompts
    from lora_rlhf.data.sources import DatasetSpec
    from lora_rlhf.pipeline import demo_data as pipeline_data
    from lora_rlhf.pipeline.run_dir import RunDir

    recipe = RecipeConfig()
    recipe.demo.system_prompt, recipe.demo.demonstrations, recipe.demo.ppo_prompts = "", 4, 4
    run = RunDir(tmp_path)
    run.data("x").parent.mkdir(parents=True, exist_ok=True)
    pipeline_data.write_task_data(recipe, run)
    demos = _read_jsonl(run.data(pipeline_data.FILES["demonstrations"]))
    system = {"role": "system", "content": ""}
    assert all(row["prompt"][0] == system and row["prompt"][1]["role"] == "user" for row in demos)
    assert all(gold_score(row["prompt"][1]["content"], row["completion"]) == 1.0 for row in demos)
    prompts, _ = load_prompts(DatasetSpec(str(run.data(pipeline_data.FILES["prompts"]))))
    assert len(prompts) == 4 and all(p[0] == system for p in prompts)
    tasks = sample_tasks(2, seed=4)
    samples = [[t.answer, "wrong", "x"] for t in tasks]
    chat = [pipeline_data.as_prompt(t.prompt, "Be brief.") for t in tasks]
    rows = demo_data.ranking_rows(chat, samples, Labeler(disagreement=0.0))
    assert [row["prompt"] for row in rows] == chat
    assert [row["ranks"] for row in rows] == [
        row["ranks"] for row in demo_data.ranking_rows([t.prompt for t in tasks], samples, Labeler(disagreement=0.0))
    ]


def test_a_labeler_with_ties_gives_equal_gold_neighbours_one_rank():
    """Equal gold scores side by side in the noisy order share a rank; without ties the ranks are a permutation."""
    from lora_rlhf.demo.labeler import Labeler

    def judge(prompts, responses):
        return [{"a": 1.0, "b": 0.5, "c": 0.5, "d": 0.0, "e": 0.0}[r] for r in responses]

    exact = Labeler(disagreement=0.0, seed=1, judge=judge, ties=True)
    assert exact.rank("p", ["d", "a", "c", "e", "b"]) == [2, 0, 1, 2, 1]
    assert sorted(Labeler(disagreement=0.0, judge=judge).rank("p", ["d", "a", "c", "e", "b"])) == [0, 1, 2, 3, 4]
    noisy = Labeler(disagreement=0.27, seed=3, judge=judge, ties=True)
    for _ in range(50):
        ranks = noisy.rank("p", ["a", "b", "c", "d", "e"])
        assert sorted(set(ranks)) == list(range(len(set(ranks))))  # dense: 0..m-1, as rankings rows take


def test_labeler_ties_need_the_rm_to_skip_tied_pairs():
    from lora_rlhf.config.loader import build
    from lora_rlhf.config.recipe import RecipeConfig

    with pytest.raises(LoraRlhfError, match=r"demo\.ties: true .* rm\.ties: 'error' refuses"):
        build(RecipeConfig, {"demo": {"enabled": True, "ties": True}, "rm": {"ties": "error"}})


def test_rows_a_labeler_ties_all_the_way_are_not_written():
    from lora_rlhf.demo.datasets import ranking_rows

    def judge(prompts, responses):
        return [0.5 if r.startswith("same") else 1.0 for r in responses]

    labeler = Labeler(disagreement=0.0, judge=judge, ties=True)
    rows = ranking_rows(["p", "q"], [["same a", "same b", "same c"], ["good", "same d"]], labeler)
    assert [row["prompt"] for row in rows] == ["q"] and rows[0]["ranks"] == [0, 1]
