"""The method registry: one explicit table per kind of part; a method YAML picks one optimizer, any transforms, one loop.

Adding a method: `methods/<m>.py` (an `Options` dataclass and `build(named_params, options, device)` for an optimizer, or
`apply(model, options, device)` for a transform), `conf/method/<m>.yaml`, `tests/methods/test_<m>.py`, and one line below.
"""
from __future__ import annotations

import importlib

from methods import (
    adafactor,
    adamw,
    adamw8bit,
    apollo,
    apollo_mini,
    apollo_torch,
    bnb_adamw8bit,
    cce_fused_ce,
    checkpointing,
    fira,
    frugal,
    fused_ce,
    galore,
    galore8bit,
    galore_torch,
    galore_torch8bit,
    int8_weights,
    liger_fused_ce,
    lisa,
    loops,
    lora,
    mezo,
    qgalore,
    qlora,
    sgd,
    torchao_adamw4bit,
    torchao_adamw8bit,
    zo_adam,
)


class MissingRequirement(RuntimeError):
    """An optional package (or a CUDA device) a method part needs is absent: its job row is `skipped`, not failed."""


def require(package: str, part: str):
    """Import an optional package for `part`, or raise MissingRequirement naming the extra that provides it."""
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise MissingRequirement(f"{part} needs the optional package '{package}' ({e}); "
                                 "install it with: pip install -e '.[ref]'") from None

OPTIMIZERS = {
    "adamw": adamw,
    "sgd": sgd,
    "adafactor": adafactor,
    "adamw8bit": adamw8bit,
    "galore": galore,
    "galore8bit": galore8bit,
    "apollo": apollo,
    "apollo_mini": apollo_mini,
    "fira": fira,
    "frugal": frugal,
    "qgalore": qgalore,
    "mezo": mezo,
    "zo_adam": zo_adam,
    "lisa": lisa,
    # reference packages run as methods (a row `skipped` where the package is absent)
    "bnb_adamw8bit": bnb_adamw8bit,
    "torchao_adamw8bit": torchao_adamw8bit,
    "torchao_adamw4bit": torchao_adamw4bit,
    "galore_torch": galore_torch,
    "galore_torch8bit": galore_torch8bit,
    "apollo_torch": apollo_torch,
}

TRANSFORMS = {
    "checkpointing": checkpointing,
    "lora": lora,
    "qlora": qlora,
    "int8_weights": int8_weights,
    "fused_ce": fused_ce,
    "liger_fused_ce": liger_fused_ce,
    "cce_fused_ce": cce_fused_ce,
}

LOOPS = {
    "standard": loops.standard_step,
    "layerwise": loops.layerwise_step,
    "zeroth_order": loops.zeroth_order_step,
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


def check_method(method, device: str, model_spec) -> None:
    """Plan-time checks: names and options exist, options fit the model (`check` of the part), and a CUDA-only part
    is refused on run.device=cpu."""
    from harness.schema import ConfigError

    module, options = optimizer_part(method)
    if hasattr(module, "check"):
        module.check(options, model_spec)
    parts = [module] + [_choose(TRANSFORMS, n, "method.transforms entry") for n in method.transforms]
    for name in method.transform_options:
        if name not in method.transforms:
            raise ConfigError(f"method.transform_options.{name} is given but {name!r} is not in method.transforms "
                              f"({', '.join(method.transforms) or 'empty'})")
    for name in method.transforms:
        transform_options(method, name)
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


def _check_device(part, device) -> None:
    if getattr(part, "REQUIRES_CUDA", False) and device.type != "cuda":
        raise MissingRequirement(f"{part.__name__.split('.')[-1]} needs a CUDA device; this job runs on {device.type}")


def build_optimizer(method, model, device):
    """The method's optimizer over the model's trainable parameters, given as (name, parameter) pairs so that
    projection methods can pick the attention / MLP matrices."""
    module, options = optimizer_part(method)
    _check_device(module, device)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if method.loop == "layerwise":
        optimizer = loops.LayerwiseOptimizer(lambda one: module.build(one, options, device), named)
    else:
        optimizer = module.build(named, options, device)
    if "int8_weights" in method.transforms:
        optimizer.attach_quantized(model)
    if getattr(module, "COMPILED_STEP", False):
        loops.hide_step_from_dispatch_modes(optimizer)
    return optimizer


def transform_options(method, name: str):
    """Parsed options of one transform (its `Options` dataclass), from method.transform_options.<name>."""
    from harness.schema import parse

    module = TRANSFORMS[name]
    given = dict(method.transform_options.get(name) or {})
    if not hasattr(module, "Options"):
        if given:
            from harness.schema import ConfigError

            raise ConfigError(f"transform {name} takes no options; remove method.transform_options.{name}")
        return None
    return parse(module.Options, given, f"method.transform_options.{name}")


def apply_transforms(method, model, device):
    for name in method.transforms:
        _check_device(TRANSFORMS[name], device)
        model = TRANSFORMS[name].apply(model, transform_options(method, name), device)
    return model


def loop_step(method):
    return LOOPS[method.loop]
