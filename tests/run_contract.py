"""The run-directory contract (docs/design.md, "Contract: what a run writes") as one check, shared by the
tests of a run made stage by stage (tests/test_cli.py) and of a multi-process run (tests/test_distributed.py).
"""

from __future__ import annotations

from pathlib import Path

from lora_rlhf.config.recipe import load_recipe
from lora_rlhf.eval.result import read_eval_result
from lora_rlhf.metrics import read_metrics
from lora_rlhf.paths import RunLayout

# Figures each stage must log (docs/design.md: "Metric names").
REQUIRED = {
    "sft": {"loss"},
    "rm": {"loss", "accuracy"},
    "ppo": {"reward", "kl", "kl_coef", "entropy", "policy_loss", "value_loss", "clipfrac", "response_length", "gold"},
}


def check_run_directory(path: Path) -> None:
    """Assert that `path` holds every artifact of a finished tiny-test pipeline (sft, rm, ppo, eval)."""
    run = RunLayout(path)
    recipe = load_recipe(run.recipe_path)
    assert recipe.model.name_or_path == "tiny:llama"
    # A critic-free PPO (ppo.advantage rloo / grpo, docs/critic_free.md) has no value role and no value loss.
    critic_free = recipe.ppo.critic_free
    assert (run.adapter("value")).exists() != critic_free
    for role in ("sft", "reward", "policy") + (() if critic_free else ("value",)):
        folder = run.adapter(role)
        for name in ("adapter_config.json", "adapter_model.safetensors", "README.md"):
            assert (folder / name).is_file(), (role, name)
        assert (folder / "head.safetensors").is_file() == (role in ("reward", "value"))
    required = REQUIRED | ({"ppo": REQUIRED["ppo"] - {"value_loss"}} if critic_free else {})
    for stage, keys in required.items():
        rows = read_metrics(run.metrics(stage))
        train = [r for r in rows if r.get("split") != "eval"]
        assert train and keys <= set(train[-1]), (stage, keys - set(train[-1]))
        assert all(list(r)[0] == "step" for r in rows)
        assert any((run.checkpoints(stage)).iterdir())
    for stage in ("sft", "rm"):
        assert any(r.get("split") == "eval" for r in read_metrics(run.metrics(stage)))
    results = read_eval_result(run.eval_path)
    models = {"base", "sft", "ppo"} | ({"dpo"} if (run.adapter("dpo")).exists() else set())  # eval scores dpo too
    assert set(results.gold) == models
    assert {"sft_vs_base", "ppo_vs_base", "ppo_vs_sft"} <= set(results.win_rate)
    assert set(results.reward) == models
    assert results.kl >= -1e-6 and 0 <= results.rm_accuracy.labels.accuracy <= 1
    report = run.report.read_text()
    assert "win" in report.lower() and "](plots/" in report
    assert {p.name for p in run.plots.glob("*.png")} >= {"ppo.png", "win_rate.png", "gold.png", "stages.png"}


# The DPO stage's figures (docs/dpo.md): TRL's names for the implicit rewards.
REQUIRED_DPO = {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"}


def check_dpo_artifacts(path: Path) -> None:
    """Assert that `path` holds what a finished dpo stage writes: adapters/dpo/ (a plain PEFT folder, no head),
    metrics/dpo.jsonl with REQUIRED_DPO on train and held-out rows, and checkpoints/dpo/."""
    run = RunLayout(path)
    folder = run.adapter("dpo")
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md"):
        assert (folder / name).is_file(), name
    assert not (folder / "head.safetensors").exists()
    rows = read_metrics(run.metrics("dpo"))
    assert all(list(r)[0] == "step" for r in rows)
    for split in ("train", "eval"):
        last = [r for r in rows if r.get("split", "train") == split][-1]
        assert REQUIRED_DPO <= set(last), (split, REQUIRED_DPO - set(last))
    assert any((run.checkpoints("dpo")).iterdir())
