"""AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019) via torch.optim.AdamW.

    m_t = β1 m_{t-1} + (1-β1) g_t,    v_t = β2 v_{t-1} + (1-β2) g_t²
    θ_t = θ_{t-1} - lr (m̂_t / (√v̂_t + ε) + λ θ_{t-1}),   m̂, v̂ bias-corrected
State: two tensors shaped like each parameter (m, v) plus a scalar step counter per parameter.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from methods.options import BETAS, NON_NEGATIVE, POSITIVE, Ranged


@dataclass(frozen=True)
class AdamHyperparameters(Ranged):
    """The options every Adam-family part shares (the 8-bit, low-rank and reference variants extend it)."""

    RANGES = {"lr": POSITIVE, "betas": BETAS, "eps": POSITIVE, "weight_decay": NON_NEGATIVE}

    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass(frozen=True)
class Options(AdamHyperparameters):
    fused: bool | Literal["auto"] = "auto"  # auto: fused kernel on CUDA, foreach elsewhere


def build(named_params, options: Options, device: torch.device) -> torch.optim.Optimizer:
    params = [p for _, p in named_params]
    fused = device.type == "cuda" if options.fused == "auto" else bool(options.fused)
    return torch.optim.AdamW(params, lr=options.lr, betas=tuple(options.betas), eps=options.eps,
                             weight_decay=options.weight_decay, fused=fused or None, foreach=None if fused else True)
