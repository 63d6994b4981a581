"""Sparse MeZO (Liu et al., "Sparse MeZO: Less Parameters for Better Performance in Zeroth-Order LLM Fine-Tuning",
2024): MeZO (methods/mezo.py) that perturbs and updates only a masked subset of each parameter, its entries of
smallest magnitude:

    m = 1[|θ| ≤ h],  h: per parameter tensor, the value below which a fraction (1 − sparsity) of its |θ| lies
    ẑ = m ⊙ z,   ℓ± = L(θ ± ε ẑ),   ĝ = (ℓ+ − ℓ−) / (2ε),   θ ← θ − lr · ĝ · ẑ
The mask is drawn from θ at the start of each step and held for that step only (one byte per parameter while the
step runs: the paper's implementation recomputes it inside the forward instead, which keeps inference memory). No
backward pass, no optimizer state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from methods.mezo import MeZO
from methods.mezo import Options as MeZOOptions
from methods.options import between

LOOP = "zeroth_order"


@dataclass(frozen=True)
class Options(MeZOOptions):
    RANGES = {"sparsity": between(0, 1)}

    sparsity: float = 0.75  # fraction of each parameter's entries left unperturbed (the largest in magnitude)


def magnitude_mask(p: torch.Tensor, sparsity: float) -> torch.Tensor:
    """True for the ⌈(1 − sparsity) · n⌉ entries of smallest |θ| (and any tied with the last of them)."""
    magnitude = p.detach().abs()
    keep = max(1, math.ceil((1 - sparsity) * magnitude.numel()))
    # a sort, not kthvalue: CUDA's kthvalue selects within one thread block per slice, 8 s a step at LLaMA-1b
    threshold = magnitude.flatten().sort().values[keep - 1]
    return magnitude <= threshold


class SparseMeZO(MeZO):
    def __init__(self, params, options: Options):
        super().__init__(params, options)
        self.sparsity = options.sparsity
        self.masks: dict[torch.Tensor, torch.Tensor] = {}

    def _z(self, p: torch.Tensor, seed: int, index: int) -> torch.Tensor:
        return MeZO._z(p, seed, index).mul_(self.masks[p])

    @torch.no_grad()
    def step(self, closure):
        self.masks = {p: magnitude_mask(p, self.sparsity) for g in self.param_groups for p in g["params"]}
        try:
            return super().step(closure)
        finally:
            self.masks = {}


def build(named_params, options: Options, device: torch.device) -> torch.optim.Optimizer:
    return SparseMeZO([p for _, p in named_params], options)
