"""The K-way loss against flattened pairs (issue 28): the flattening, the K cut, and the script's one-line errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lora_rlhf.data.rankings import Ranking, flatten_ranking, parse_ranking

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "kway_vs_pairs.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("kway_vs_pairs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flatten_gives_every_untied_pair_with_its_winner():
    # Ranks: b best, then d, then a and c tied, then e.
    ranking = Ranking("p", ["a", "b", "c", "d", "e"], [2, 0, 2, 1, 3])
    rows = flatten_ranking(ranking)
    pairs = {(row["chosen"], row["rejected"]) for row in rows}
    expected = {
        ("b", "a"), ("b", "c"), ("b", "d"), ("b", "e"),
        ("d", "a"), ("d", "c"), ("d", "e"),
        ("a", "e"), ("c", "e"),
    }  # fmt: skip
    assert pairs == expected  # C(5,2) = 10 minus the tied (a, c)
    assert len(rows) == 9
    assert all(row["prompt"] == "p" for row in rows)


def test_flatten_of_a_permutation_is_all_c_k_2_pairs_and_round_trips_as_k2_rankings():
    ranking = parse_ranking({"prompt": "p", "responses": ["w", "x", "y", "z"], "ranks": [3, 1, 0, 2]}, "error")
    rows = flatten_ranking(ranking)
    assert len(rows) == 6
    for row in rows:
        pair = parse_ranking(row, "error")
        winner, loser = pair.responses
        assert ranking.ranks[ranking.responses.index(winner)] < ranking.ranks[ranking.responses.index(loser)]


def test_flatten_after_the_tie_policy_drops_the_identical_copy():
    ranking = parse_ranking({"prompt": "p", "responses": ["x", "y", "x"], "ranks": [0, 1, 2]}, "skip_pairs")
    assert {(r["chosen"], r["rejected"]) for r in flatten_ranking(ranking)} == {("x", "y")}


def test_cut_ranking_reranks_the_first_k(script):
    ranking = Ranking("p", list("abcdef"), [5, 2, 0, 4, 1, 3])
    cut = script.cut_ranking(ranking, 4)
    assert cut.responses == list("abcd") and cut.ranks == [3, 1, 0, 2]
    assert script.cut_ranking(Ranking("p", list("abc"), [1, 1, 0]), 2) is None  # only a tie left


def test_variant_rows_hold_the_same_pairs(script):
    rows = [{"prompt": f"p{i}", "responses": list("abcdefgh"), "ranks": [7, 3, 0, 5, 1, 6, 2, 4]} for i in range(3)]
    data = script.variant_rows(rows, 4, "skip_pairs", seed=0)
    assert len(data["kway"]) == 3 and all(len(r["responses"]) == 4 for r in data["kway"])
    assert len(data["pairs"]) == 3 * 6
    assert data["pairs"] != sorted(data["pairs"], key=lambda r: r["prompt"])  # shuffled across prompts


def test_batching_matches_responses_per_forward_and_optionally_steps(script):
    assert script.batching("kway", 8, 4, 48, 48) == (4, 1)
    assert script.batching("pairs", 8, 4, 777, 48) == (16, 1)  # 16 pairs = 32 responses, as 4 rankings of 8
    assert script.batching("pairs_same_steps", 8, 4, 777, 48) == (16, 4)  # 49 micro-batches // 12 kway steps


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([], "RUN_DIR"),
        (["run", "--ks", "8,x"], "--ks"),
        (["run", "--ks", "1"], ">= 2"),
        (["run", "--prompts", "-1"], "--prompts"),
        (["run", "--prompts", "many"], "--prompts"),
        (["run", "--views", "pairs"], "--views"),
        (["run", "--views", "kway,triples"], "--views"),
    ],
)
def test_argument_errors_are_one_line(script, capsys, argv, needle):
    with pytest.raises(SystemExit) as exit_info:
        script.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err, err


def test_a_missing_run_directory_is_one_line(script, capsys, tmp_path):
    assert script.main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "recipe.yaml is missing" in err, err
