"""A method config's parts, from the registry tables of methods/__init__.py: names chosen, options parsed and checked
while planning, then the optimizer and transforms built in the job.

A method part knows its options, not where they sit in the config: it raises ValueError or TypeError. Here those
become one ConfigError line naming the key (`method.optimizer.rank=65 exceeds …`), so bad options stop the plan.
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager

import methods
from harness.schema import ConfigError, parse
from methods import LOOPS, OPTIMIZERS, TRANSFORMS


@contextmanager
def _options_of(where: str, options_cls=None):
    """Re-raise a part's ValueError / TypeError as a ConfigError under `where`: `where.key=…` when the message starts
    with one of the part's option names, else `where: message`."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        names = {f.name for f in dataclasses.fields(options_cls)} if options_cls else set()
        raise ConfigError(f"{where}.{text}" if text.split("=")[0] in names else f"{where}: {text}") from None


def _choose(table: dict, name: object, where: str):
    if name not in table:
        raise ConfigError(f"unknown {where} {name!r}; allowed: {', '.join(table)}")
    return table[name]


def optimizer_part(method):
    """(module, parsed options) of the method's optimizer; ConfigError on an unknown name or option."""
    options = dict(method.optimizer)
    module = _choose(OPTIMIZERS, options.pop("name", None), "method.optimizer.name")
    return module, parse(module.Options, options, "method.optimizer")  # parse reports the Options' own ValueError


def transform_options(method, name: str):
    """Parsed options of one transform (its `Options` dataclass, or None), from method.transform_options.<name>."""
    module, where = TRANSFORMS[name], f"method.transform_options.{name}"
    given = dict(method.transform_options.get(name) or {})
    if not hasattr(module, "Options"):
        if given:
            raise ConfigError(f"transform {name} takes no options; remove {where}")
        return None
    return parse(module.Options, given, where)


def check_method(method, device: str, model_spec) -> None:
    """Plan-time checks: names and options exist, options fit the model (`check` of the part), and a CUDA-only part
    is refused on run.device=cpu."""
    module, options = optimizer_part(method)
    if hasattr(module, "check"):
        with _options_of("method.optimizer", module.Options):
            module.check(options, model_spec)
    parts = [module] + [_choose(TRANSFORMS, n, "method.transforms entry") for n in method.transforms]
    for name in method.transform_options:
        if name not in method.transforms:
            raise ConfigError(f"method.transform_options.{name} is given but {name!r} is not in method.transforms "
                              f"({', '.join(method.transforms) or 'empty'})")
    replaced: dict[str, str] = {}  # what a transform replaces (REPLACES) -> the transform
    for name in method.transforms:
        part, part_options = TRANSFORMS[name], transform_options(method, name)
        if hasattr(part, "check"):
            with _options_of(f"method.transform_options.{name}", part.Options):
                part.check(part_options, model_spec)
        what = getattr(part, "REPLACES", None)
        if what in replaced:
            raise ConfigError(f"method.transforms: {replaced[what]} and {name} both replace {what}; the second "
                              "would break or undo the first, use one")
        if what:
            replaced[what] = name
    _choose(LOOPS, method.loop, "method.loop")
    if "int8_weights" in method.transforms and not getattr(module, "UPDATES_INT8_WEIGHTS", False):
        capable = ", ".join(n for n, m in OPTIMIZERS.items() if getattr(m, "UPDATES_INT8_WEIGHTS", False))
        raise ConfigError(f"optimizer {method.optimizer['name']} cannot update INT8 weights; allowed with "
                          f"int8_weights: {capable}")
    if "int8_weights" in method.transforms and method.loop not in ("standard", "layerwise"):
        raise ConfigError(f"int8_weights updates weights inside backward; method.loop={method.loop} has none "
                          "(allowed: standard, layerwise)")
    needs_loop = getattr(module, "LOOP", None)  # zeroth-order optimizers need their loop; others any but that one
    if method.loop != needs_loop if needs_loop else method.loop == "zeroth_order":
        raise ConfigError(f"method.loop={method.loop} does not fit optimizer {method.optimizer['name']}; "
                          f"it needs method.loop={needs_loop or 'standard or layerwise'}")
    for part in parts:
        if getattr(part, "REQUIRES_CUDA", False) and device == "cpu":
            raise ConfigError(f"method {method.name} needs CUDA ({part.__name__.split('.')[-1]}) but run.device=cpu; "
                              "use run.device=cuda or auto on a GPU host")


def build_optimizer(method, model, device):
    """The method's optimizer (methods.build_optimizer) with its parsed options."""
    module, options = optimizer_part(method)
    return methods.build_optimizer(module, options, model, device, loop=method.loop,
                                   int8_weights="int8_weights" in method.transforms)


def apply_transforms(method, model, device):
    """The model after the method's transforms (methods.apply_transforms), each with its parsed options."""
    parts = [(TRANSFORMS[name], transform_options(method, name)) for name in method.transforms]
    return methods.apply_transforms(parts, model, device)


def loop_step(method):
    return LOOPS[method.loop]
