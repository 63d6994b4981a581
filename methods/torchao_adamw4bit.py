"""Reference: torchao's AdamW4bit (Li et al., "Memory Efficient Optimizers with 4-bit States", NeurIPS 2023:
4-bit first moment, 4-bit second moment with rank-1 normalization, block 128), as a method. Needs torchao."""
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
    block_size: int = 128


def build(named_params, options: Options, device: torch.device) -> torch.optim.Optimizer:
    from methods import require

    optim = require("torchao.optim", "method torchao_adamw4bit")
    return optim.AdamW4bit([p for _, p in named_params], lr=options.lr, betas=tuple(options.betas), eps=options.eps,
                           weight_decay=options.weight_decay, block_size=options.block_size)
