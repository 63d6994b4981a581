"""Fira (Chen et al., "Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank Constraint?", 2024).

GaLore's projected Adam update plus the part of the gradient GaLore throws away, rescaled column-wise by how much
Adam rescales the projected gradient:
    R = Pᵀ G,  N = Adam(R),  φ_j = ‖N[:, j]‖ / ‖R[:, j]‖
    ΔW = α · P N + α · limit(φ ⊙ (G − P R)),   W ← W − lr · ΔW
with P from the SVD of G every T steps and limit(·) the norm-growth limiter (γ = 1.01) on the residual term.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.apollo import limit_growth
from methods.galore import GaLoreAdamW
from methods.galore import Options as GaLoreOptions
from methods.lowrank import check_rank, split_groups
from methods.options import at_least


@dataclass(frozen=True)
class Options(GaLoreOptions):
    RANGES = {"growth_limit": at_least(1)}  # γ < 1 would shrink the residual term towards 0

    growth_limit: float = 1.01


class FiraAdamW(GaLoreAdamW):
    def full_update(self, grad, low_grad, direction, state, group):
        channel_dim = 0 if state["side"] == "left" else 1
        phi = direction.norm(dim=channel_dim) / low_grad.norm(dim=channel_dim).clamp(min=1e-12)
        residual = grad - self.back(low_grad, state)
        phi = phi.to(grad.dtype)
        residual = residual * (phi.unsqueeze(0) if channel_dim == 0 else phi.unsqueeze(1))
        limit_growth([residual], [state], "prev_residual_norm", self.options.growth_limit)
        return self.options.scale * (self.back(direction.to(grad.dtype), state) + residual)


check = check_rank
UPDATES_INT8_WEIGHTS = True  # its rule can run inside INT8 layers (methods/int8_weights.py)


def build(named_params, options: Options, device: torch.device) -> torch.optim.Optimizer:
    return FiraAdamW(split_groups(named_params, options), options)
