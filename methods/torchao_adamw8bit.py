"""Reference: torchao's AdamW8bit (blockwise 8-bit dynamic-map state held in a tensor subclass, OptimState8bit),
run as a method to compare with our adamw8bit. Needs torchao; otherwise the row is `skipped`.
The state bytes are counted through the subclass's inner tensors (codes + scales), not numel × element_size."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.adamw import AdamHyperparameters
from methods.options import COUNT

COMPILED_STEP = True  # torchao compiles its step (fullgraph): the live-tensor probe must not wrap it


@dataclass(frozen=True)
class Options(AdamHyperparameters):
    RANGES = {"block_size": COUNT}

    block_size: int = 256


def build(named_params, options, device: torch.device, class_name: str = "AdamW8bit") -> torch.optim.Optimizer:
    from methods import require

    optim = require("torchao.optim", f"method torchao_{class_name.lower()}")
    return getattr(optim, class_name)([p for _, p in named_params], lr=options.lr, betas=tuple(options.betas),
                                      eps=options.eps, weight_decay=options.weight_decay,
                                      block_size=options.block_size)
