"""Adafactor (Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", ICML 2018)
via torch.optim.Adafactor.

For a matrix parameter the second moment is factored into row and column statistics,
    R_t = β2t R_{t-1} + (1-β2t) rowmean(g_t²),   C_t = β2t C_{t-1} + (1-β2t) colmean(g_t²),
    V̂_t = R_t C_tᵀ / mean(R_t),   θ_t = θ_{t-1} - lr · g_t / √V̂_t,   β2t = 1 - t^{beta2_decay}
so an n×m matrix keeps n + m numbers instead of 2nm (no first moment).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.options import NON_NEGATIVE, NON_POSITIVE, POSITIVE, Ranged, at_least, optional


@dataclass(frozen=True)
class Options(Ranged):
    # torch.optim.Adafactor's own ranges: β2t = 1 - t^beta2_decay needs beta2_decay <= 0, the clipping threshold d >= 1
    RANGES = {"lr": POSITIVE, "beta2_decay": NON_POSITIVE, "eps1": optional(NON_NEGATIVE), "eps2": NON_NEGATIVE,
              "d": at_least(1), "weight_decay": NON_NEGATIVE}

    lr: float = 1e-2
    beta2_decay: float = -0.8
    eps1: float | None = None
    eps2: float = 1e-3
    d: float = 1.0
    weight_decay: float = 0.0


def build(named_params, options: Options, device: torch.device) -> torch.optim.Optimizer:
    params = [p for _, p in named_params]
    return torch.optim.Adafactor(params, lr=options.lr, beta2_decay=options.beta2_decay,
                                 eps=(options.eps1, options.eps2), d=options.d, weight_decay=options.weight_decay,
                                 foreach=False)
