"""bitsandbytes' 8-bit AdamW (Dettmers et al., "8-bit Optimizers via Block-wise Quantization", ICLR 2022), run as
a method so that native 8-bit optimizers can be compared with it in one sweep. The update is AdamW's; m and v are
stored as 8-bit dynamic-tree codes with one fp32 absmax per block of 256 (2 bytes + 8/256 bytes per parameter).
Needs bitsandbytes (`ref` / `dev` extras); without it the job's row is `skipped`. Runs on CUDA and, with
bitsandbytes >= 0.45, on CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.adamw import AdamHyperparameters


@dataclass(frozen=True)
class Options(AdamHyperparameters):
    pass


def build(named_params, options: Options, device: torch.device) -> torch.optim.Optimizer:
    params = [p for _, p in named_params]
    from methods import require

    bnb = require("bitsandbytes", "method bnb_adamw8bit")
    return bnb.optim.AdamW8bit(params, lr=options.lr, betas=tuple(options.betas), eps=options.eps,
                               weight_decay=options.weight_decay)
