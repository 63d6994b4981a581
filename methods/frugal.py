"""FRUGAL (Zmushko et al., "FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for Scalable
Training", ICML 2025): split the gradient into a state-full subspace, updated by Adam, and the state-free rest,
updated by signSGD:
    R = Pᵀ G (P from the SVD of G every T steps),   ΔW = α · P Adam(R) + ρ · sign(G − P R),   W ← W − lr · ΔW
ρ = free_lr_ratio scales the state-free step relative to the state-full one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.galore import GaLoreAdamW
from methods.galore import Options as GaLoreOptions
from methods.lowrank import check_rank, split_groups
from methods.options import NON_NEGATIVE


@dataclass(frozen=True)
class Options(GaLoreOptions):
    RANGES = {"free_lr_ratio": NON_NEGATIVE}  # 0: no state-free step (GaLore's update)

    scale: float = 1.0
    free_lr_ratio: float = 1.0


class FrugalAdamW(GaLoreAdamW):
    def full_update(self, grad, low_grad, direction, state, group):
        residual = grad - self.back(low_grad, state)
        return (self.back((self.options.scale * direction).to(grad.dtype), state)
                + self.options.free_lr_ratio * residual.sign())


check = check_rank
UPDATES_INT8_WEIGHTS = True  # its rule can run inside INT8 layers (methods/int8_weights.py)


def build(named_params, options: Options, device: torch.device) -> torch.optim.Optimizer:
    return FrugalAdamW(split_groups(named_params, options), options)
