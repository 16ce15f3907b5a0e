"""Build nested dataclass configs from YAML mappings and dotted `key=value` overrides.

Every unknown key or ill-typed value becomes a one-line LoraRlhfError naming the dotted key and what
is allowed; the dataclasses' own `__post_init__` checks the values' ranges. A dataclass may list keys it
no longer has in a `moved_keys` table (old dotted key -> new, relative to it): such a key is answered
with where it went ("ppo.kl_coef moved to ppo.rewards.kl_coef").
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import yaml

from lora_rlhf.errors import LoraRlhfError

T = TypeVar("T")


def build(cls: type[T], data: Mapping[str, Any] | None, prefix: str = "") -> T:
    """Instantiate dataclass `cls` from `data`, recursing into dataclass-typed fields."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise LoraRlhfError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {_show(data)}")
    _reject_moved(getattr(cls, "moved_keys", {}), data, prefix)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise LoraRlhfError(f"unknown key {prefix + str(unknown[0])!r}; allowed: {', '.join(fields)}")
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except LoraRlhfError as exc:
        # __post_init__ names the bad field relative to its dataclass ("r: 0 is ..."); add where it sits.
        message = str(exc)
        if prefix and message.split(":")[0] in fields:
            raise LoraRlhfError(prefix + message) from None
        raise


def _reject_moved(moved: Mapping[str, str], data: Mapping[str, Any], prefix: str) -> None:
    """A one-line error for the first old key of `moved` (old dotted key -> new) that `data` still sets."""
    for old, new in moved.items():
        node: Any = data
        for part in old.split("."):
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            raise LoraRlhfError(f"{prefix}{old} moved to {prefix}{new}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except LoraRlhfError as exc:
                errors.append(exc)
        if len(errors) == 1 and value is not None and "finite" in str(errors[0]):
            raise errors[0]  # `x: float | None` given inf: say why, not just "not a number or null"
        allowed = " or ".join(_describe(a) for a in args)
        raise LoraRlhfError(f"{key}: {_show(value)} is not {allowed}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise LoraRlhfError(f"{key}: {_show(value)} is not one of {', '.join(map(str, args))}")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise LoraRlhfError(f"{key}: {_show(value)} is not a list")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise LoraRlhfError(f"{key}: {_show(value)} is not a mapping")
        return dict(value)
    return _scalar(value, tp, key)


def _scalar(value: Any, tp: Any, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        return _float(value, key)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise LoraRlhfError(f"{key}: {_show(value)} is not {_describe(tp)}")


def _float(value: Any, key: str) -> float:
    """A finite number; numeric strings count, since PyYAML (YAML 1.1) reads `1e-4` and `-1e-4` as strings.

    NaN and infinity are refused here for every float key: `learning_rate: .inf` trained an all-NaN adapter
    and `.nan` slipped past range checks (`nan <= 0` is False), both issue 12.
    """
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = float(value.strip())
    if number is None:
        raise LoraRlhfError(f"{key}: {_show(value)} is not a number")
    if not math.isfinite(number):
        raise LoraRlhfError(f"{key}: {_show(value)} is not a finite number")
    return number


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if tp in names:
        return names[tp]
    if typing.get_origin(tp) in (list, tuple) or tp in (list, tuple):
        return "a list"
    return getattr(tp, "__name__", str(tp))


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, (dict, list)) else type(value).__name__


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """["ppo.rewards.kl_coef=0.05", "model.quantization=nf4"] -> nested dict; values are parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise LoraRlhfError(f"override {item!r} is not of the form key.subkey=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise LoraRlhfError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return nested


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge `update` into a copy of `base` (mappings merge, everything else replaces)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain YAML-able data."""
    return dataclasses.asdict(config)
