"""The config loader: unknown keys, bad types and overrides give one-line errors naming the key."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import pytest

from lora_rlhf.config import build, merge, parse_overrides
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.models import BaseModelConfig, LoraSettings


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
