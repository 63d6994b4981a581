"""Reference: torchao's AdamW8bit (blockwise 8-bit dynamic-map state held in a tensor subclass, OptimState8bit),
run as a method to compare with our adamw8bit. Needs torchao; otherwise the row is `skipped`.
The state bytes are counted through the subclass's inner tensors (codes + scales), not numel × element_size."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

COMPILED_STEP = True  # torchao compiles its step (fullgraph): the live-tensor probe must not wrap it


@dataclass(frozen=True)
class Options:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    block_size: int = 256


def build(named_params, options: Options, device: torch.device) -> torch.optim.Optimizer:
    from methods import require

    optim = require("torchao.optim", "method torchao_adamw8bit")
    return optim.AdamW8bit([p for _, p in named_params], lr=options.lr, betas=tuple(options.betas), eps=options.eps,
                           weight_decay=options.weight_decay, block_size=options.block_size)
