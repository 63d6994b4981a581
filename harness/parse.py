"""Parsing the composed config into frozen dataclasses.

`parse(cls, data, where)` checks keys (unknown keys fail with the allowed list), types, Literal choices and that numbers
are finite, then the dataclass's own range checks (a ValueError from its __post_init__, message starting with the
field name), so a bad value fails before any job starts with one line that names the key and what is allowed.
"""
from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, fields
from typing import Any, Literal


class ConfigError(ValueError):
    """A bad config or command line: the message is one line saying what was wrong and what is allowed."""


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin is list:
        (inner,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return all(_finite(v) for v in value) if isinstance(value, list) else True


def parse(cls: type, data: Any, where: str):
    """Build dataclass `cls` from a plain dict, or raise ConfigError naming `where.key`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown key '{where}.{unknown[0]}'; allowed keys in {where}: {', '.join(names)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        if f.name in data:
            value = data[f.name]
        elif f.default is not MISSING:
            value = f.default
        elif f.default_factory is not MISSING:
            value = f.default_factory()
        else:
            raise ConfigError(f"missing key '{where}.{f.name}' ({_describe(hints[f.name])})")
        if isinstance(value, int) and not isinstance(value, bool) and hints[f.name] is float:
            value = float(value)
        if not _type_ok(value, hints[f.name]):
            raise ConfigError(f"{where}.{f.name}={value!r} is invalid; expected {_describe(hints[f.name])}")
        if not _finite(value):  # job.json stores nan and inf as null: the job would not get the value given
            raise ConfigError(f"{where}.{f.name}={value!r} is invalid; it must be finite (not nan or inf)")
        values[f.name] = tuple(value) if isinstance(value, list) else value
    try:
        return cls(**values)
    except (ValueError, TypeError) as e:  # a range check of `cls` (__post_init__): its message starts with the field
        raise ConfigError(f"{where}.{str(e).strip().splitlines()[0]}") from None


SEEDS = 2**32  # numpy's generator takes seeds in [0, 2**32); every seed of the config is kept in that range


def _check_seed(key: str, seed: int) -> None:
    if not 0 <= seed < SEEDS:
        raise ConfigError(f"{key}={seed} is invalid; seeds are integers in [0, 2**32)")
