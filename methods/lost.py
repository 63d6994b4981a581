"""LOST (Li et al., "LOST: Low-rank and Sparse Pre-training for Large Language Models", 2025): each target linear
layer's random initial weight is split by its singular values into a trained low-rank part and a trained
channel-wise sparse part:

    W₀ = U Σ Vᵀ;   B = U_r √Σ_r,  A = √Σ_r V_rᵀ   (the dominant r singular directions)
    W_c = U_{r:} Σ_{r:} V_{r:}ᵀ                    (the remaining singular values)
    S = W_c[:, K],  K: the ⌈δ · in⌉ input channels (columns) of W_c of largest norm, fixed for the run
    y = B A x + S x_K
Trained: B, A and S (dense over its channels); parameters, gradients and optimizer state per layer are r (out + in) +
out · |K|. The split follows the paper's abstract (SVD, dominant low-rank part, the remaining singular values made
into channel-wise sparse components); the choice of channels by column norm and the plain sum are this
implementation's, not checked against the authors' code, which was not available here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from methods.factorized import spectral_factors
from methods.lora import DEFAULT_TARGETS, REPLACES, check, replace_targets  # noqa: F401  (targets, checks as LoRA's)
from methods.options import COUNT, NAMES, Ranged, between


@dataclass(frozen=True)
class Options(Ranged):
    RANGES = {"rank": COUNT, "density": between(0, 1), "targets": NAMES}

    rank: int = 128
    density: float = 0.03  # δ, the share of input channels the sparse part keeps
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))


class LOSTLinear(nn.Module):
    def __init__(self, linear: nn.Linear, rank: int, density: float):
        super().__init__()
        weight = linear.weight.detach()
        b, a, (u, s, vh) = spectral_factors(weight, rank)
        self.b, self.a = nn.Parameter(b), nn.Parameter(a)  # out × r, r × in
        complement = (u[:, rank:] * s[rank:]) @ vh[rank:]
        channels = complement.norm(dim=0).topk(max(1, math.ceil(density * weight.shape[1]))).indices.sort().values
        self.register_buffer("channels", channels)
        self.s = nn.Parameter(complement[:, channels].to(weight.dtype))  # out × |K|
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (x @ self.a.T) @ self.b.T + x.index_select(-1, self.channels) @ self.s.T
        return y if self.bias is None else y + self.bias


def apply(model: nn.Module, options: Options, device: torch.device) -> nn.Module:
    return replace_targets(model, options, lambda linear: LOSTLinear(linear, options.rank, options.density))
