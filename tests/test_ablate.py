"""`lora-rlhf ablate` on the tiny-test recipe: every method from one run's sft and reward, one table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from lora_rlhf.cli.main import main as cli
from lora_rlhf.config.recipe import RECIPES
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.pipeline.ablation.measure import MIB, measured
from lora_rlhf.pipeline.ablation.run import user_overrides

TINY = str(RECIPES / "tiny-test.yaml")
ROWS = [
    "sft",
    "best-of-2 (sft + RM)",
    "PPO",
    "PPO-ptx",
    "RLOO (critic-free)",
    "DPO, ranking as pairs (sigmoid)",
    "DPO, whole ranking (Plackett–Luce)",
]
METHODS = ("ppo", "ppo_ptx", "rloo", "dpo_pairs", "dpo_pl")


@pytest.fixture(scope="module")
def sft_rm_run(tmp_path_factory) -> Path:
    """A tiny run whose sft and rm stages are finished (no ppo), as the ablation expects."""
    run = tmp_path_factory.mktemp("ablate") / "run"
    for stage in ("sft", "rm"):
        assert cli([stage, "--config", TINY, "--output-dir", str(run)]) == 0, stage
    return run


@pytest.fixture(scope="module")
def ablated(sft_rm_run, tmp_path_factory) -> Path:
    lm_text = tmp_path_factory.mktemp("text") / "lm_text.jsonl"
    lm_text.write_text(
        "".join(json.dumps({"text": f"plain text number {i} about nothing in particular."}) + "\n" for i in range(4))
    )
    ptx = sft_rm_run / "data" / "demonstrations.jsonl"  # {prompt, completion} rows: no dependence on {"text"} ptx
    argv = ["ablate", "--steps", "1", "--ptx-coef", "0.5", "--ptx-path", str(ptx), str(sft_rm_run)]
    overrides = ["eval.bootstrap_samples=20", "eval.best_of_n=2", "eval.max_prompts=4", f"eval.lm_text.path={lm_text}"]
    assert cli(argv + overrides) == 0
    return sft_rm_run


def _summary(run: Path) -> dict:
    return json.loads((run / "ablation" / "ablation.json").read_text())


def test_one_table_with_the_seven_rows(ablated):
    out = ablated / "ablation"
    summary = _summary(ablated)
    assert [row["model"] for row in summary["rows"]] == ROWS
    sft, bon, *trained = summary["rows"]
    assert sft["kl"] == 0 and all(row["kl"] is not None for row in trained)
    assert sft["gold"] is not None and bon["gold"] is not None and bon["win_rate_vs_sft"] is None
    for row in trained:  # every method measured against sft on the same prompts
        assert row["gold"] is not None and row["gold_minus_sft_ci"] is not None, row["model"]
        assert row["win_rate_vs_sft"] is not None, row["model"]
    assert all(row["lm_loss"] is not None for row in summary["rows"])
    table = (out / "ablation.md").read_text()
    assert all(f"| {label} |" in table for label in ROWS) and "—" in table
    assert "Equal budget" in table and "optimizer steps" in table


def test_every_two_methods_and_best_of_n_are_compared_on_the_same_prompts(ablated):
    summary = _summary(ablated)
    pairs = summary["pairs"]
    assert {r["method"] for r in pairs["ranking"]} == {*METHODS, "best_of_n"} and pairs["without_gold"] == []
    golds = [r["gold"] for r in pairs["ranking"]]
    assert golds == sorted(golds, reverse=True)
    assert len(pairs["pairs"]) == 6 * 5 // 2 and pairs["bootstrap_samples"] == 20
    rows = {row["method"]: row for row in summary["rows"]}
    for pair in pairs["pairs"]:  # the same per-prompt gold as the table's: the differences follow from its means
        if "best_of_n" not in (pair["a"], pair["b"]):
            assert pair["diff"] == pytest.approx(rows[pair["a"]]["gold"] - rows[pair["b"]]["gold"], abs=1e-9)
        assert pair["ci"][0] <= pair["diff"] + 1e-9 and pair["diff"] - 1e-9 <= pair["ci"][1]
    table = (ablated / "ablation" / "ablation.md").read_text()
    assert "## Which to pick: gold differences between the methods [paired 95% CI]" in table
    assert f"- {rows[pairs['pairs'][0]['a']]['model']} − {rows[pairs['pairs'][0]['b']]['model']}: " in table


def test_every_method_has_its_adapter_and_its_budget(ablated):
    summary = _summary(ablated)
    rows = {row["method"]: row for row in summary["rows"]}
    role = {"ppo": "policy", "ppo_ptx": "policy", "rloo": "policy", "dpo_pairs": "dpo", "dpo_pl": "dpo"}
    for name in METHODS:
        run = ablated / "ablation" / name
        assert (run / "adapters" / role[name] / "adapter_model.safetensors").is_file(), name
        assert (run / "eval.json").is_file()
        assert (run / "adapters" / "sft" / "adapter_model.safetensors").read_bytes() == (
            ablated / "adapters" / "sft" / "adapter_model.safetensors"
        ).read_bytes()
        budget, cost = rows[name]["budget"], rows[name]["cost"]
        assert budget["samples"] > 0 and budget["prompts"] > 0, name
        assert cost["wall_s"] > 0 and cost["peak_rss_mib"] > 0, name
    # Equal budget: every method took the same number of optimizer steps (PPO: 1 iteration x 4 samples / 2).
    assert {rows[name]["budget"]["optimizer_steps"] for name in METHODS} == {2}
    assert rows["dpo_pairs"]["budget"]["logged_last_step"] == rows["dpo_pl"]["budget"]["logged_last_step"] == 2
    assert not (ablated / "ablation" / "rloo" / "adapters" / "value").exists()  # critic-free: no value role
    assert (ablated / "ablation" / "ppo" / "adapters" / "value").is_dir()


def test_the_dpo_variants_train_on_the_runs_rankings(ablated):
    rankings = str((ablated / "data" / "rankings.jsonl").resolve())
    summary = _summary(ablated)
    assert summary["rankings"] == rankings
    for name, loss in (("dpo_pairs", "sigmoid"), ("dpo_pl", "plackett_luce")):
        recipe = yaml.safe_load((ablated / "ablation" / name / "recipe.yaml").read_text())
        assert recipe["dpo"]["data"]["path"] == rankings and recipe["dpo"]["loss_type"] == loss
        assert summary["methods"][name]["data"] == rankings
        metrics = (ablated / "ablation" / name / "metrics" / "dpo.jsonl").read_text().splitlines()
        assert any(json.loads(line).get("pairs") for line in metrics)


def test_the_ppo_variants_differ_in_what_they_ablate_only(ablated):
    recipes = {
        name: yaml.safe_load((ablated / "ablation" / name / "recipe.yaml").read_text())
        for name in ("ppo", "ppo_ptx", "rloo")
    }
    ptx_path = str((ablated / "data" / "demonstrations.jsonl").resolve())
    assert recipes["ppo"]["ppo"]["ptx"]["coef"] == 0 and recipes["ppo_ptx"]["ppo"]["ptx"]["coef"] == 0.5
    assert recipes["rloo"]["ppo"]["ptx"]["coef"] == 0 and recipes["rloo"]["ppo"]["advantage"] == "rloo"
    assert recipes["ppo"]["ppo"]["ptx"]["data"]["path"] == recipes["ppo_ptx"]["ppo"]["ptx"]["data"]["path"] == ptx_path
    assert all(r["ppo"]["steps"] == 1 for r in recipes.values())
    # All train and evaluate on the original run's data, not on copies of their own.
    assert recipes["ppo"]["ppo"]["prompts"]["path"] == str((ablated / "data" / "prompts.jsonl").resolve())


def test_a_rerun_reuses_the_trained_methods(ablated, capsys):
    before = (ablated / "ablation" / "dpo_pl" / "adapters" / "dpo" / "adapter_model.safetensors").stat().st_mtime_ns
    argv = ["ablate", "--methods", "dpo_pl", "--steps", "1", str(ablated), "eval.bootstrap_samples=20"]
    assert cli(argv + ["eval.max_prompts=4"]) == 0
    after = (ablated / "ablation" / "dpo_pl" / "adapters" / "dpo" / "adapter_model.safetensors").stat().st_mtime_ns
    assert before == after
    rows = _summary(ablated)["rows"]
    assert [row["model"] for row in rows] == ROWS  # the earlier methods' rows stay in the table
    assert rows[-1]["method"] == "dpo_pl" and rows[-1]["cost"]["wall_s"] > 0  # the cost read back
    # the earlier methods' per-prompt gold is read back from their runs: every pair is still there
    assert {r["method"] for r in _summary(ablated)["pairs"]["ranking"]} >= set(METHODS)


def test_methods_evaluated_on_other_prompts_are_refused(ablated, capsys):
    argv = ["ablate", "--methods", "dpo_pl", "--steps", "1", str(ablated), "eval.bootstrap_samples=20"]
    assert cli(argv + ["eval.max_prompts=3"]) == 2  # dpo_pl evaluated again on 3 prompts, the others were on 4
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the base's loading bars: the one-line error
    assert "different prompts" in err and "Traceback" not in err
    assert str(ablated / "ablation" / "ppo") in err and str(ablated / "ablation" / "dpo_pl") in err


def test_a_run_without_a_reward_adapter_is_a_one_line_error(sft_rm_run, tmp_path, capsys):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(sft_rm_run / "recipe.yaml", partial / "recipe.yaml")
    shutil.copytree(sft_rm_run / "adapters" / "sft", partial / "adapters" / "sft")
    assert cli(["ablate", "--ptx-path", str(sft_rm_run / "data" / "demonstrations.jsonl"), str(partial)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "adapters/reward" in err and "lora-rlhf rm" in err


def test_no_ptx_text_is_a_one_line_error(sft_rm_run, tmp_path, capsys):
    bare = tmp_path / "bare"  # the run's recipe and roles, but no data/ptx_text.jsonl
    shutil.copytree(sft_rm_run / "adapters", bare / "adapters", ignore=shutil.ignore_patterns("policy", "value"))
    shutil.copy(sft_rm_run / "recipe.yaml", bare / "recipe.yaml")
    assert cli(["ablate", "--steps", "1", str(bare)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--ptx-path" in err


def test_an_unknown_method_is_a_one_line_error(sft_rm_run, capsys):
    assert cli(["ablate", "--methods", "ppo,dpo_ipo", str(sft_rm_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dpo_ipo" in err and "dpo_pl" in err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("ppo.ptx.coef=2", "ppo.ptx.coef is set by --ptx-coef"),
        ("ppo.ptx.data.path=x.jsonl", "ppo.ptx.data is set by --ptx-path"),
        ("ppo.steps=3", "ppo.steps is set by --steps"),
        ("ppo.advantage=grpo", "ppo.advantage is set by --methods"),
        ("dpo.loss_type=sigmoid", "dpo.loss_type is set by --methods"),
    ],
)
def test_overrides_of_what_a_flag_sets_are_refused(override, message):
    with pytest.raises(LoraRlhfError, match=f"^{message}, not by an override$"):
        user_overrides([override])
    assert user_overrides(["ppo.ptx.batch_size=2"]) == {"ppo": {"ptx": {"batch_size": 2}}}


def test_each_phase_has_its_own_peak_memory():
    with measured() as cost:
        block = b"\x01" * (64 * MIB)  # written, so resident
        del block
    with measured() as after:  # the block is gone: with the high-water mark reset, this phase's peak is lower
        pass
    assert cost["wall_s"] >= 0 and cost["peak_rss_mib"] - cost["start_rss_mib"] >= 60
    if after["rss_reset"]:
        assert after["peak_rss_mib"] < cost["peak_rss_mib"] - 30


def test_a_run_recipe_cannot_turn_on_remote_code_for_the_ablation(sft_rm_run, tmp_path, monkeypatch, caplog, capsys):
    """Issue 29, one rule for remote code: RUN_DIR's recipe.yaml asking for it reached the base's loading."""
    from lora_rlhf.pipeline.ablation import run as ablation_run

    loaded = []

    def no_model(recipe):
        loaded.append(recipe.model.trust_remote_code)
        raise LoraRlhfError("stopped before the base loads")

    monkeypatch.setattr(ablation_run, "load_stack", no_model)
    downloaded = tmp_path / "downloaded"
    shutil.copytree(sft_rm_run / "adapters", downloaded / "adapters")
    recipe = yaml.safe_load((sft_rm_run / "recipe.yaml").read_text())
    recipe["model"]["trust_remote_code"] = True
    (downloaded / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    argv = ["ablate", "--methods", "ppo", "--ptx-path", str(sft_rm_run / "data" / "demonstrations.jsonl")]
    with caplog.at_level("WARNING"):
        assert cli([*argv, str(downloaded)]) == 2
    assert loaded == [False] and "sets model.trust_remote_code" in caplog.text
    assert cli([*argv, "--trust-remote-code", str(downloaded)]) == 2
    assert loaded == [False, True]
    method_recipe = yaml.safe_load((downloaded / "ablation" / "ppo" / "recipe.yaml").read_text())
    assert method_recipe["model"]["trust_remote_code"] is False  # never recorded
