"""The config loader: unknown keys, bad types and overrides give one-line errors naming the key."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import pytest

from lora_rlhf.config import build, merge, parse_overrides
from lora_rlhf.config.recipe import DemoConfig
from lora_rlhf.data.sources import DatasetSpec
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.eval.config import EvalConfig, IFEvalConfig
from lora_rlhf.inference.options import GenerationOptions
from lora_rlhf.models import BaseModelConfig, LoraSettings
from lora_rlhf.ppo.config import PPOConfig, PtxConfig, RewardsConfig, SamplingConfig
from lora_rlhf.rm.config import RMConfig
from lora_rlhf.train.config import OptimConfig


@dataclasses.dataclass
class Inner:
    rate: float = 0.1
    mode: Literal["fixed", "adaptive"] = "fixed"
    names: list[str] | str = "all"
    limit: int | None = None


@dataclasses.dataclass
class Outer:
    inner: Inner = dataclasses.field(default_factory=Inner)
    model: BaseModelConfig = dataclasses.field(default_factory=BaseModelConfig)
    lora: LoraSettings = dataclasses.field(default_factory=LoraSettings)
    flag: bool = False


def test_builds_nested_and_coerces_ints_to_floats():
    config = build(Outer, {"inner": {"rate": 1, "names": ["a", "b"], "limit": None}, "flag": True})
    assert config.inner.rate == 1.0 and isinstance(config.inner.rate, float)
    assert config.inner.names == ["a", "b"] and config.flag is True


@pytest.mark.parametrize(
    "data, message",
    [
        ({"inner": {"rte": 1}}, "unknown key 'inner.rte'; allowed: rate, mode, names, limit"),
        ({"inner": {"mode": "sometimes"}}, "inner.mode: 'sometimes' is not one of fixed, adaptive"),
        ({"inner": {"rate": "fast"}}, "inner.rate: 'fast' is not a number"),
        ({"flag": "yes"}, "flag: 'yes' is not true/false"),
        ({"inner": {"limit": 1.5}}, "inner.limit: 1.5 is not an integer or null"),
        ({"model": {"quantization": "fp4"}}, "model.quantization: 'fp4' is not one of"),
        ({"lora": {"r": -1}}, "lora.r: -1 is not a positive integer"),
        ({"inner": 3}, "inner: expected a mapping of keys, got 3"),
    ],
)
def test_errors_name_the_key(data, message):
    with pytest.raises(LoraRlhfError) as info:
        build(Outer, data)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_overrides_parse_yaml_scalars_and_merge():
    overrides = parse_overrides(
        ["inner.rate=0.05", "inner.names=[q_proj, v_proj]", "flag=true", "model.name_or_path=a/b"]
    )
    merged = merge({"inner": {"mode": "adaptive"}}, overrides)
    config = build(Outer, merged)
    assert config.inner.rate == 0.05 and config.inner.mode == "adaptive"
    assert config.inner.names == ["q_proj", "v_proj"] and config.flag is True
    assert config.model.name_or_path == "a/b"
    with pytest.raises(LoraRlhfError, match="override 'nonsense' is not of the form key.subkey=value"):
        parse_overrides(["nonsense"])


@dataclasses.dataclass
class Sectioned:
    moved_keys: ClassVar[dict[str, str]] = {"rate": "inner.rate", "inner.limit": "inner.cap.limit"}

    inner: Inner = dataclasses.field(default_factory=Inner)


@dataclasses.dataclass
class Holder:
    sectioned: Sectioned = dataclasses.field(default_factory=Sectioned)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"sectioned": {"rate": 0.5}}, "sectioned.rate moved to sectioned.inner.rate"),
        ({"sectioned": {"inner": {"limit": 3}}}, "sectioned.inner.limit moved to sectioned.inner.cap.limit"),
    ],
)
def test_a_moved_key_names_its_new_place(data, message):
    with pytest.raises(LoraRlhfError) as info:
        build(Holder, data)
    assert str(info.value) == message


def test_moved_keys_do_not_touch_the_new_ones():
    assert build(
        Holder, merge({"sectioned": {"inner": {"rate": 0.5}}}, parse_overrides(["sectioned.inner.mode=adaptive"]))
    ) == Holder(Sectioned(Inner(rate=0.5, mode="adaptive")))


@pytest.mark.parametrize(
    "cls, key, bad, message",
    [
        (DemoConfig, "eval_ranking_prompts", 0, "eval_ranking_prompts: 0 must be a positive integer"),
        (EvalConfig, "bootstrap_samples", -3, "bootstrap_samples: -3 must be a positive integer"),
        (EvalConfig, "best_of_n_prompts", 0, "best_of_n_prompts: 0 must be a positive integer or null"),
        (IFEvalConfig, "batch_size", 0, "batch_size: 0 must be a positive integer"),
        (IFEvalConfig, "max_prompts", 0, "max_prompts: 0 must be a positive integer or null"),
        (GenerationOptions, "max_new_tokens", 2.5, "max_new_tokens: 2.5 must be a positive integer"),
        (PPOConfig, "steps", 0, "steps: 0 must be a positive integer"),
        (PtxConfig, "max_length", 0, "max_length: 0 must be a positive integer"),
        (RewardsConfig, "kl_horizon", 0, "kl_horizon: 0 must be a positive integer"),
        (SamplingConfig, "max_new_tokens", 0, "max_new_tokens: 0 must be a positive integer"),
        (RMConfig, "bias_examples", 0, "bias_examples: 0 must be a positive integer"),
        (OptimConfig, "keep_checkpoints", 0, "keep_checkpoints: 0 must be a positive integer"),
        (OptimConfig, "max_steps", 0, "max_steps: 0 must be a positive integer or null"),
        (DatasetSpec, "max_rows", -1, "max_rows: -1 must be a positive integer or null"),
    ],
)
def test_every_config_checks_its_counts_with_the_same_message(cls, key, bad, message):
    cls(**{key: 1})  # 1 is fine, and None too where null is allowed
    with pytest.raises(LoraRlhfError) as info:
        cls(**{key: bad})
    assert str(info.value) == message
    if message.endswith("or null"):
        assert getattr(cls(**{key: None}), key) is None
