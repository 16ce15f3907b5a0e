"""The ablation's method-versus-method intervals on hand-built eval outputs: eval's own paired bootstrap on the
per-prompt gold each method's eval_samples.jsonl keeps; methods evaluated on different prompts are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.eval.config import EvalConfig
from lora_rlhf.eval.samples import write_eval_samples
from lora_rlhf.eval.stats import paired_diff_ci
from lora_rlhf.paths import RunLayout
from lora_rlhf.pipeline.ablation.pairs import method_pairs
from lora_rlhf.pipeline.ablation.table import pair_lines

PROMPTS = [f"prompt {i}" for i in range(12)]
CONFIG = EvalConfig(bootstrap_samples=300, confidence=0.9, seed=3)
rng = np.random.default_rng(0)
SFT = rng.uniform(0.3, 0.6, len(PROMPTS))
GOLD = {
    "ppo": SFT + 0.05 + rng.normal(0, 0.01, len(PROMPTS)),
    "rloo": SFT + 0.08,
    "dpo_pl": SFT + rng.normal(0, 0.2, 12),
}
BON = SFT[:5] + 0.1  # best-of-N on the first 5 prompts, drawn by the first method's eval


def _method(tmp_path, name, gold, prompts=PROMPTS, best_of_n=None):
    """A method's run dir as its eval leaves it: eval_samples.jsonl with sft's and the method's gold per prompt."""
    key = "dpo" if name.startswith("dpo") else "ppo"
    path = tmp_path / name
    path.mkdir()
    answers = {"sft": ["s"] * len(prompts), key: ["m"] * len(prompts)}
    scores = None if gold is None else {"sft": list(SFT[: len(prompts)]), key: list(gold)}
    write_eval_samples(RunLayout(path).eval_samples, prompts, answers, 1, gold=scores, best_of_n_gold=best_of_n)
    return path


@pytest.fixture
def dirs(tmp_path):
    return {name: _method(tmp_path, name, GOLD[name], best_of_n=BON if name == "ppo" else None) for name in GOLD}


def test_every_pair_is_paired_diff_ci_on_the_same_numbers_best_first(dirs):
    pairs = method_pairs(dirs, CONFIG, best_of_n_from="ppo")
    means = {"ppo": GOLD["ppo"].mean(), "rloo": GOLD["rloo"].mean(), "dpo_pl": GOLD["dpo_pl"].mean()}
    means["best_of_n"] = BON.mean()
    ranking = sorted(means, key=means.get, reverse=True)
    assert [r["method"] for r in pairs["ranking"]] == ranking
    assert [(p["a"], p["b"]) for p in pairs["pairs"]] == [
        (a, b) for i, a in enumerate(ranking) for b in ranking[i + 1 :]
    ]
    scores = {name: list(g) for name, g in GOLD.items()} | {"best_of_n": list(BON)}
    kwargs = {"samples": 300, "confidence": 0.9, "seed": 3}
    for pair in pairs["pairs"]:
        n = 5 if "best_of_n" in (pair["a"], pair["b"]) else 12  # best-of-N: on its own prompts only
        a, b = scores[pair["a"]][:n], scores[pair["b"]][:n]
        assert pair["ci"] == list(paired_diff_ci(a, b, **kwargs)) and pair["prompts"] == n
        assert pair["diff"] == pytest.approx(np.mean(a) - np.mean(b))
        assert pair["excludes_zero"] == (pair["ci"][0] > 0 or pair["ci"][1] < 0)
    rloo_ppo = next(p for p in pairs["pairs"] if (p["a"], p["b"]) == ("rloo", "ppo"))
    assert rloo_ppo["excludes_zero"] and rloo_ppo["diff"] == pytest.approx(0.03, abs=0.01)
    assert pairs["without_gold"] == [] and pairs["confidence"] == 0.9 and pairs["bootstrap_samples"] == 300


def test_methods_evaluated_on_different_prompts_are_refused_naming_both_dirs(tmp_path):
    dirs = {"ppo": _method(tmp_path, "ppo", GOLD["ppo"])}
    dirs["rloo"] = _method(tmp_path, "rloo", GOLD["rloo"][:8], prompts=PROMPTS[:8])
    with pytest.raises(LoraRlhfError, match="different prompts") as error:
        method_pairs(dirs, CONFIG)
    message = str(error.value)
    assert str(dirs["ppo"]) in message and str(dirs["rloo"]) in message and "\n" not in message
    reordered = {"ppo": dirs["ppo"], "dpo_pl": _method(tmp_path, "dpo_pl", GOLD["dpo_pl"], prompts=PROMPTS[::-1])}
    with pytest.raises(LoraRlhfError, match="first difference at prompt 1"):
        method_pairs(reordered, CONFIG)


def test_a_method_evaluated_before_gold_was_kept_per_prompt_is_left_out(tmp_path):
    dirs = {"ppo": _method(tmp_path, "ppo", GOLD["ppo"]), "rloo": _method(tmp_path, "rloo", GOLD["rloo"])}
    dirs["dpo_pl"] = _method(tmp_path, "dpo_pl", None)  # an eval_samples.jsonl without "gold", as before issue 27
    pairs = method_pairs(dirs, CONFIG, best_of_n_from="ppo")
    assert pairs["without_gold"] == ["dpo_pl"] and [(p["a"], p["b"]) for p in pairs["pairs"]] == [("rloo", "ppo")]
    summary = {"prompts": 12, "rows": _rows(), "pairs": pairs}
    assert "`--methods dpo_pl` evaluates again" in "\n".join(pair_lines(summary))


def _rows():
    labels = {"sft": "sft", "best_of_n": "best-of-2 (sft + RM)", "ppo": "PPO", "rloo": "RLOO", "dpo_pl": "DPO PL"}
    return [{"method": method, "model": model} for method, model in labels.items()]


def test_the_list_reads_best_first_and_says_which_differences_exclude_0(dirs):
    pairs = method_pairs(dirs, CONFIG, best_of_n_from="ppo")
    lines = pair_lines({"prompts": 12, "rows": _rows(), "pairs": pairs})
    text = "\n".join(lines)
    assert lines[0] == "## Which to pick: gold differences between the methods [paired 90% CI]"
    rloo_ppo = next(p for p in pairs["pairs"] if (p["a"], p["b"]) == ("rloo", "ppo"))
    lo, hi = rloo_ppo["ci"]
    assert f"- RLOO − PPO: {rloo_ppo['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]" in lines
    assert any(line.startswith("- best-of-2 (sft + RM) − ") and line.endswith("(first 5 prompts)") for line in lines)
    verdict = next(line for line in lines if line.startswith("Differences whose interval excludes 0: "))
    assert "RLOO − PPO" in verdict
    assert text.index("Ranked by gold: ") < text.index("- ") < text.index(verdict)
    json.dumps(pairs)  # ablation.json holds it as it is
    none = pair_lines({"prompts": 12, "rows": _rows(), "pairs": {**pairs, "ranking": [], "pairs": []}})
    assert "No method-versus-method intervals" in "\n".join(none)
