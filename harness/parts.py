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
from methods import CACHES, LOOPS, OPTIMIZERS, TRANSFORMS


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


def cache_part(method):
    """(module, parsed options) of a generate method's KV cache (methods.CACHES)."""
    if method.cache is None:
        raise ConfigError(f"method {method.name} has no method.cache, so scenario=generate cannot run it; generate "
                          f"methods name one of: {', '.join(CACHES)}")
    module = _choose(CACHES, method.cache, "method.cache")
    return module, parse(module.Options, dict(method.cache_options), "method.cache_options")


def check_generate_method(method, device: str, model_spec) -> None:
    """Plan-time checks of a generate method: its cache and options, and transforms that are inference ones."""
    cache_part(method)
    if method.optimizer is not None:
        raise ConfigError(f"method {method.name} trains (method.optimizer is set); scenario=generate runs methods "
                          "with a method.cache and no optimizer")
    inference = [n for n, m in TRANSFORMS.items() if getattr(m, "INFERENCE", False)]
    for name in method.transforms:
        if name not in inference:
            raise ConfigError(f"method.transforms: {name} is not an inference transform; allowed with "
                              f"scenario=generate: {', '.join(inference)}")
    _check_transforms(method, device, model_spec, [])


def check_method(method, device: str, model_spec) -> None:
    """Plan-time checks: names and options exist, options fit the model (`check` of the part), and a CUDA-only part
    is refused on run.device=cpu."""
    if method.cache is not None:
        raise ConfigError(f"method {method.name} is a generate method (method.cache={method.cache}); run it with "
                          "scenario=generate")
    if method.optimizer is None:
        raise ConfigError(f"method {method.name} has no method.optimizer; a training scenario needs one")
    module, options = optimizer_part(method)
    if hasattr(module, "check"):
        with _options_of("method.optimizer", module.Options):
            module.check(options, model_spec)
    _check_transforms(method, device, model_spec, [module])
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


def _check_transforms(method, device: str, model_spec, parts: list) -> None:
    """The transforms exist, their options parse and fit the model, no two replace the same layers, and no part
    that needs CUDA (among them and `parts`) is planned on run.device=cpu."""
    parts = parts + [_choose(TRANSFORMS, n, "method.transforms entry") for n in method.transforms]
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


def row_fields(model, optimizer) -> dict:
    """Row fields of parts that keep bytes off the device: `row_fields()` of the saved-activation codec a transform
    installed (methods/saved_activations.py) and of the optimizer (methods/cpu_offload_adamw.py), where they have one."""
    fields = {}
    for part in (getattr(model, "membench_codec", None), optimizer):
        fields.update(getattr(part, "row_fields", dict)())
    return fields
