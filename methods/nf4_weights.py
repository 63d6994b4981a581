"""NF4 weights for inference, native (no bitsandbytes, runs on CPU too): QLoRA's frozen base layer
(methods/qlora.NF4Linear: 4-bit NormalFloat codes, an fp32 absmax per block of `block_size`, 0.5625 bytes a weight,
dequantized to the compute dtype inside each forward) on the attention and MLP layers, without adapters.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from methods.lora import DEFAULT_TARGETS, REPLACES, replace_linears, target_shapes  # noqa: F401
from methods.options import COUNT, NAMES, Ranged
from methods.qlora import NF4Linear

INFERENCE = True  # usable by scenario=generate


@dataclass(frozen=True)
class Options(Ranged):
    RANGES = {"targets": NAMES, "block_size": COUNT}

    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    block_size: int = 64


def check(options: Options, model_spec) -> None:
    target_shapes(options.targets, model_spec)


def apply(model, options: Options, device):
    for p in model.parameters():
        p.requires_grad_(False)
    if replace_linears(model, set(options.targets), lambda linear: NF4Linear(linear, options.block_size)) == 0:
        raise ValueError(f"nf4_weights found no nn.Linear named {options.targets} in {type(model).__name__}")
    return model
