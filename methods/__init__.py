"""The method registry: one explicit table per kind of part; a method YAML picks one optimizer, any transforms, one loop.

Adding a method: `methods/<m>.py` (an `Options` dataclass and `build(named_params, options, device)` for an optimizer, or
`apply(model, options, device)` for a transform), `conf/method/<m>.yaml`, `tests/methods/test_<m>.py`, and one line below.
A part raises ValueError or TypeError on options it cannot take; the harness (harness/parts.py) parses the options,
runs the plan-time checks and reports those errors as config errors naming the key. An `Options` dataclass derives
from methods.options.Ranged and gives each numeric or list option a rule in RANGES (a test asks for one); a part's
optional `check(options, model_spec)` checks what needs the model (a rank against its widths, targets against its
layers); a transform that replaces layers or the loss says what in REPLACES, so two such are refused together.
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
    bnb_int8,
    bnb_nf4,
    cce_fused_ce,
    checkpointing,
    compress_activations,
    cpu_offload_adamw,
    factorized,
    fira,
    frugal,
    fused_ce,
    galore,
    galore8bit,
    galore_torch,
    galore_torch8bit,
    h2o_cache,
    hf_quantized_cache,
    int8_weights,
    kivi_cache,
    kv_cache,
    kvpress_cache,
    liger_fused_ce,
    lisa,
    loops,
    lora,
    lost,
    mezo,
    nf4_weights,
    offload_activations,
    qgalore,
    qlora,
    sgd,
    sink_window_cache,
    sltrain,
    sparse_mezo,
    torchao_adamw4bit,
    torchao_adamw8bit,
    torchao_cpu_offload,
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
    "sparse_mezo": sparse_mezo,
    "lisa": lisa,
    "cpu_offload_adamw": cpu_offload_adamw,
    # reference packages run as methods (a row `skipped` where the package is absent)
    "bnb_adamw8bit": bnb_adamw8bit,
    "torchao_adamw8bit": torchao_adamw8bit,
    "torchao_adamw4bit": torchao_adamw4bit,
    "galore_torch": galore_torch,
    "galore_torch8bit": galore_torch8bit,
    "apollo_torch": apollo_torch,
    "torchao_cpu_offload_adamw": torchao_cpu_offload,
}

TRANSFORMS = {
    "checkpointing": checkpointing,
    "lora": lora,
    "factorized": factorized,
    "qlora": qlora,
    "int8_weights": int8_weights,
    "fused_ce": fused_ce,
    "liger_fused_ce": liger_fused_ce,
    "cce_fused_ce": cce_fused_ce,
    "sltrain": sltrain,
    "lost": lost,
    "compress_activations": compress_activations,
    "offload_activations": offload_activations,
    # weight quantization for scenario=generate (INFERENCE = True), composable with any cache
    "nf4_weights": nf4_weights,
    "bnb_int8": bnb_int8,
    "bnb_nf4": bnb_nf4,
}

# KV caches for scenario=generate: `build(model, options, max_tokens) -> transformers.Cache`
CACHES = {
    "full": kv_cache,
    "kivi": kivi_cache,
    "sink_window": sink_window_cache,
    "h2o": h2o_cache,
    # reference packages (a row `skipped` where the package is absent)
    "hf_quantized": hf_quantized_cache,
    "kvpress": kvpress_cache,
}

LOOPS = {
    "standard": loops.standard_step,
    "layerwise": loops.layerwise_step,
    "zeroth_order": loops.zeroth_order_step,
}


def _check_device(part, device) -> None:
    if getattr(part, "REQUIRES_CUDA", False) and device.type != "cuda":
        raise MissingRequirement(f"{part.__name__.split('.')[-1]} needs a CUDA device; this job runs on {device.type}")


def build_optimizer(part, options, model, device, loop: str = "standard", int8_weights: bool = False):
    """Optimizer module `part` (an OPTIMIZERS value) with its parsed `options` over the model's trainable parameters,
    given as (name, parameter) pairs so that projection methods can pick the attention / MLP matrices; `loop` is a
    LOOPS key, `int8_weights` whether that transform was applied (the optimizer then updates its INT8 layers)."""
    _check_device(part, device)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if loop == "layerwise":
        optimizer = loops.LayerwiseOptimizer(lambda one: part.build(one, options, device), named)
    else:
        optimizer = part.build(named, options, device)
    if int8_weights:
        optimizer.attach_quantized(model)
    if getattr(part, "COMPILED_STEP", False):
        loops.hide_step_from_dispatch_modes(optimizer)
    return optimizer


def apply_transforms(parts: list, model, device):
    """The model after each (transform module, parsed options) of `parts`, in order."""
    for part, options in parts:
        _check_device(part, device)
        model = part.apply(model, options, device)
    return model
