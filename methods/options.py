"""Value ranges of method options. Each `Options` dataclass in methods/ derives from `Ranged` and names a `Rule` for
each of its numeric and list fields in RANGES (a subclass adds to its bases' rules and keeps them when it only
changes a default); building the options checks every rule, so a value the optimizer or transform would reject, or
that would make it diverge or do nothing, fails while the job is planned. A failure is a ValueError whose message
starts with the field name, "lr=-0.1 is invalid; it must be finite and > 0": the caller prefixes where the options
came from (method.optimizer., method.transform_options.lora., ...).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple


class Rule(NamedTuple):
    allowed: str  # completes "it must be ..."
    ok: Callable[[object], bool]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def at_least(low: float) -> Rule:
    return Rule(f"finite and >= {low}", lambda v: _number(v) and math.isfinite(v) and v >= low)


def between(low: float, high: float, closed_high: bool = False) -> Rule:
    """low <= value < high (<= high with closed_high)."""
    return Rule(f"in [{low}, {high}{']' if closed_high else ')'}",
                lambda v: _number(v) and low <= v and (v <= high if closed_high else v < high))


def optional(rule: Rule) -> Rule:
    return Rule(f"null or {rule.allowed}", lambda v: v is None or rule.ok(v))


POSITIVE = Rule("finite and > 0", lambda v: _number(v) and math.isfinite(v) and v > 0)
NON_NEGATIVE = at_least(0)
NON_POSITIVE = Rule("finite and <= 0", lambda v: _number(v) and math.isfinite(v) and v <= 0)
COUNT = Rule("an integer >= 1", lambda v: _integer(v) and v >= 1)  # ranks, intervals, group and block sizes
POWER_OF_TWO = Rule("a power of two (1, 2, 4, ...)", lambda v: _integer(v) and v >= 1 and v & (v - 1) == 0)
# numpy and torch generators take seeds in [0, 2**32) and [0, 2**64); derived per-step seeds must stay in the latter
SEED = Rule("an integer in [0, 2**32)", lambda v: _integer(v) and 0 <= v < 2**32)
INT64 = Rule("an integer in [-2**63, 2**63)", lambda v: _integer(v) and -2**63 <= v < 2**63)
BETAS = Rule("two numbers in [0, 1), e.g. [0.9, 0.999]",
             lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(between(0, 1).ok(b) for b in v))
NAMES = Rule("a non-empty list of module names", lambda v: isinstance(v, (list, tuple)) and len(v) > 0
             and all(isinstance(n, str) and n for n in v))


def rules_of(cls: type) -> dict[str, Rule]:
    """The RANGES of `cls` and its bases, a subclass's rule winning over its base's for the same field."""
    rules: dict[str, Rule] = {}
    for klass in reversed(cls.__mro__):
        rules.update(vars(klass).get("RANGES", {}))
    return rules


class Ranged:
    """Base of the Options dataclasses: __post_init__ checks every field against its rule (see the module doc)."""

    RANGES: dict[str, Rule] = {}

    def __post_init__(self) -> None:
        for name, rule in rules_of(type(self)).items():
            value = getattr(self, name)
            if not rule.ok(value):
                shown = list(value) if isinstance(value, tuple) else value  # lists arrive as tuples (frozen options)
                raise ValueError(f"{name}={shown!r} is invalid; it must be {rule.allowed}")
