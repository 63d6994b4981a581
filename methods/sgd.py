"""SGD (with optional heavy-ball momentum) via torch.optim.SGD.

    b_t = μ b_{t-1} + g_t  (μ > 0),   θ_t = θ_{t-1} - lr (b_t or g_t)
State: none when μ = 0; one momentum buffer per parameter otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.options import NON_NEGATIVE, POSITIVE, Ranged, between


@dataclass(frozen=True)
class Options(Ranged):
    RANGES = {"lr": POSITIVE, "momentum": between(0, 1), "weight_decay": NON_NEGATIVE}  # μ >= 1 diverges

    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0


def build(named_params, options: Options, device: torch.device) -> torch.optim.Optimizer:
    params = [p for _, p in named_params]
    return torch.optim.SGD(params, lr=options.lr, momentum=options.momentum, weight_decay=options.weight_decay,
                           foreach=True)
