"""scripts/ablate_demo.py on the tiny-test recipe: PPO and PPO-ptx from one run's sft and reward, one table."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import yaml

from lora_rlhf.cli.main import main as cli
from lora_rlhf.config.recipe import RECIPES
from lora_rlhf.errors import LoraRlhfError

TINY = str(RECIPES / "tiny-test.yaml")
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "ablate_demo.py"
ROWS = ["sft", "best-of-2 (sft + RM)", "PPO", "PPO-ptx"]


def _load_script():
    spec = importlib.util.spec_from_file_location("ablate_demo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ablate():
    return _load_script()


@pytest.fixture(scope="module")
def sft_rm_run(tmp_path_factory) -> Path:
    """A tiny run whose sft and rm stages are finished (no ppo), as the ablation expects."""
    run = tmp_path_factory.mktemp("ablate") / "run"
    for stage in ("sft", "rm"):
        assert cli([stage, "--config", TINY, "--output-dir", str(run)]) == 0, stage
    return run


@pytest.fixture(scope="module")
def ablated(ablate, sft_rm_run, tmp_path_factory) -> Path:
    lm_text = tmp_path_factory.mktemp("text") / "lm_text.jsonl"
    lm_text.write_text(
        "".join(json.dumps({"text": f"plain text number {i} about nothing in particular."}) + "\n" for i in range(4))
    )
    ptx = (
        sft_rm_run / "data" / "demonstrations.jsonl"
    )  # {prompt, completion} rows: no dependence on {"text"} ptx support
    argv = [
        str(sft_rm_run),
        "--steps",
        "1",
        "--ptx-coef",
        "0.5",
        "--ptx-path",
        str(ptx),
        "eval.bootstrap_samples=20",
        "eval.best_of_n=2",
        "eval.max_prompts=4",
        f"eval.lm_text.path={lm_text}",
    ]
    assert ablate.main(argv) == 0
    return sft_rm_run


def test_one_table_with_the_four_rows(ablated, capsys):
    out = ablated / "ablation"
    summary = json.loads((out / "ablation.json").read_text())
    assert [row["model"] for row in summary["rows"]] == ROWS
    sft, bon, ppo, ptx = summary["rows"]
    assert sft["kl"] == 0 and ppo["kl"] is not None and ptx["kl"] is not None
    assert sft["gold"] is not None and ppo["gold_minus_sft_ci"] is not None and ptx["win_rate_vs_sft"] is not None
    assert bon["gold"] is not None and bon["win_rate_vs_sft"] is None  # best-of-N keeps no per-prompt picks
    assert all(row["lm_loss"] is not None for row in summary["rows"])
    table = (out / "ablation.md").read_text()
    assert all(f"| {label} |" in table for label in ROWS) and "—" in table


def test_the_variants_differ_in_the_ptx_coefficient_only(ablated):
    recipes = {
        name: yaml.safe_load((ablated / "ablation" / name / "recipe.yaml").read_text()) for name in ("ppo", "ppo_ptx")
    }
    ptx_path = str((ablated / "data" / "demonstrations.jsonl").resolve())
    assert recipes["ppo"]["ppo"]["ptx"]["coef"] == 0 and recipes["ppo_ptx"]["ppo"]["ptx"]["coef"] == 0.5
    assert recipes["ppo"]["ppo"]["ptx"]["data"]["path"] == recipes["ppo_ptx"]["ppo"]["ptx"]["data"]["path"] == ptx_path
    assert all(r["ppo"]["steps"] == 1 for r in recipes.values())
    # Both variants train and evaluate on the original run's data, not on copies of their own.
    assert recipes["ppo"]["ppo"]["prompts"]["path"] == str((ablated / "data" / "prompts.jsonl").resolve())
    for name in recipes:
        variant = ablated / "ablation" / name
        assert (variant / "adapters" / "policy" / "adapter_config.json").is_file()
        assert (variant / "adapters" / "sft" / "adapter_model.safetensors").read_bytes() == (
            ablated / "adapters" / "sft" / "adapter_model.safetensors"
        ).read_bytes()
        assert (variant / "eval.json").is_file()


def test_a_run_without_a_reward_adapter_is_a_one_line_error(ablate, sft_rm_run, tmp_path, capsys):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(sft_rm_run / "recipe.yaml", partial / "recipe.yaml")
    shutil.copytree(sft_rm_run / "adapters" / "sft", partial / "adapters" / "sft")
    assert ablate.main([str(partial), "--ptx-path", str(sft_rm_run / "data" / "demonstrations.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "adapters/reward" in err and "lora-rlhf rm" in err


def test_no_ptx_text_is_a_one_line_error(ablate, sft_rm_run, tmp_path, capsys):
    bare = tmp_path / "bare"  # the run's recipe and roles, but no data/ptx_text.jsonl
    shutil.copytree(sft_rm_run / "adapters", bare / "adapters", ignore=shutil.ignore_patterns("policy", "value"))
    shutil.copy(sft_rm_run / "recipe.yaml", bare / "recipe.yaml")
    assert ablate.main([str(bare), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--ptx-path" in err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("ppo.ptx.coef=2", "ppo.ptx.coef is set by --ptx-coef"),
        ("ppo.ptx.data.path=x.jsonl", "ppo.ptx.data is set by --ptx-path"),
        ("ppo.steps=3", "ppo.steps is set by --steps"),
    ],
)
def test_overrides_of_what_a_flag_sets_are_refused(ablate, override, message):
    with pytest.raises(LoraRlhfError, match=f"^{message}, not by an override$"):
        ablate.user_overrides([override])
    assert ablate.user_overrides(["ppo.ptx.batch_size=2"]) == {"ppo": {"ptx": {"batch_size": 2}}}
