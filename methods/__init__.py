"""The method registry: one explicit table per kind of part; a method YAML picks one optimizer, any transforms, one loop.

Adding a method: `methods/<m>.py` (an `Options` dataclass and `build(params, options, device)` for an optimizer, or
`apply(model, device)` for a transform), `conf/method/<m>.yaml`, `tests/methods/test_<m>.py`, and one line below.
"""
from __future__ import annotations

from methods import adafactor, adamw, checkpointing, loops, sgd

OPTIMIZERS = {
    "adamw": adamw,
    "sgd": sgd,
    "adafactor": adafactor,
}

TRANSFORMS = {
    "checkpointing": checkpointing,
}

LOOPS = {
    "standard": loops.standard_step,
}


def _choose(table: dict, name: object, where: str):
    from harness.schema import ConfigError

    if name not in table:
        raise ConfigError(f"unknown {where} {name!r}; allowed: {', '.join(table)}")
    return table[name]


def optimizer_part(method):
    """(module, parsed options) of the method's optimizer; ConfigError on an unknown name or option."""
    from harness.schema import parse

    options = dict(method.optimizer)
    module = _choose(OPTIMIZERS, options.pop("name", None), "method.optimizer.name")
    return module, parse(module.Options, options, "method.optimizer")


def check_method(method) -> None:
    optimizer_part(method)
    for name in method.transforms:
        _choose(TRANSFORMS, name, "method.transforms entry")
    _choose(LOOPS, method.loop, "method.loop")


def build_optimizer(method, params, device):
    module, options = optimizer_part(method)
    return module.build(params, options, device)


def apply_transforms(method, model, device):
    for name in method.transforms:
        model = TRANSFORMS[name].apply(model, device)
    return model


def loop_step(method):
    return LOOPS[method.loop]
