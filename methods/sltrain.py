"""SLTrain (Han et al., "SLTrain: a sparse plus low-rank approach for parameter and memory efficient pretraining",
NeurIPS 2024): each target linear layer's weight is a trained low-rank product plus a trained sparse matrix on a
fixed random support,

    W = (α / r) · B A + S,   B ∈ R^{out × r} (zeros), A ∈ R^{r × in} (Kaiming-uniform),
    S = scatter(values, support),  support: ⌊δ · out · in⌋ positions drawn uniformly once, values ~ U(±1/√in),
as the authors' SpLoRaLinear builds it (andyjm3/SLTrain, splora/splora_linear.py). Trained: B, A and the values of S;
the support never changes. Parameters, gradients and optimizer state shrink to r (out + in) + δ · out · in per layer
(+ the support's int32 indices, a buffer). The dense W exists only inside the layer's forward and backward (a custom
autograd function recomputes it in the backward rather than keeping it), so any optimizer can train the layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from methods.lora import DEFAULT_TARGETS, REPLACES, check, replace_targets  # noqa: F401  (targets, checks as LoRA's)
from methods.options import COUNT, NAMES, POSITIVE, SEED, Ranged, between


@dataclass(frozen=True)
class Options(Ranged):
    RANGES = {"rank": COUNT, "density": between(0, 1), "alpha": POSITIVE, "targets": NAMES, "seed": SEED}

    rank: int = 128
    density: float = 0.03  # δ, the share of S's entries on the support (the authors' scripts: 0.03 at every size)
    alpha: float = 32.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    seed: int = 0  # the supports' draw


def dense_weight(b, a_scaled, values, support, shape) -> torch.Tensor:
    weight = b @ a_scaled
    return weight.view(-1).index_add_(0, support, values.to(weight.dtype)).view(shape)


class SparsePlusLowRank(torch.autograd.Function):
    """y = x Wᵀ + bias with W = B A' + scatter(values); saves x and the factors, not W."""

    @staticmethod
    def forward(ctx, x, b, a_scaled, values, support, bias):
        weight = dense_weight(b, a_scaled, values, support, (b.shape[0], a_scaled.shape[1]))
        ctx.save_for_backward(x, b, a_scaled, values, support)
        ctx.has_bias = bias is not None
        return nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_y):
        x, b, a_scaled, values, support = ctx.saved_tensors
        weight = dense_weight(b, a_scaled, values, support, (b.shape[0], a_scaled.shape[1]))
        grad_x = grad_y @ weight
        del weight
        grad_w = grad_y.reshape(-1, grad_y.shape[-1]).T @ x.reshape(-1, x.shape[-1])  # out × in, freed below
        grad_b, grad_a = grad_w @ a_scaled.T, b.T @ grad_w
        grad_values = grad_w.view(-1)[support].to(values.dtype)
        grad_bias = grad_y.reshape(-1, grad_y.shape[-1]).sum(0) if ctx.has_bias else None
        return grad_x, grad_b, grad_a, grad_values, None, grad_bias


class SLTrainLinear(nn.Module):
    def __init__(self, linear: nn.Linear, rank: int, density: float, alpha: float, generator: torch.Generator):
        super().__init__()
        out_features, in_features = linear.weight.shape
        dtype, device = linear.weight.dtype, linear.weight.device
        self.shape, self.scaling = (out_features, in_features), alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, in_features, dtype=dtype, device=device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, dtype=dtype, device=device))
        nnz = int(density * out_features * in_features)
        support = torch.randperm(out_features * in_features, generator=generator, device=device)[:nnz]
        self.register_buffer("support", support.sort().values.to(torch.int32))  # half the bytes of int64 indices
        bound = 1 / math.sqrt(in_features)
        self.values = nn.Parameter(torch.empty(nnz, dtype=dtype, device=device).uniform_(-bound, bound))
        self.bias = linear.bias

    def weight(self) -> torch.Tensor:
        """The dense W (for tests and inspection; the forward never keeps it)."""
        return dense_weight(self.lora_b, self.lora_a * self.scaling, self.values, self.support, self.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return SparsePlusLowRank.apply(x, self.lora_b, self.lora_a * self.scaling, self.values, self.support,
                                       self.bias)


def apply(model: nn.Module, options: Options, device: torch.device) -> nn.Module:
    layers = 0

    def make(linear: nn.Linear) -> SLTrainLinear:
        nonlocal layers  # each layer its own support, all of them from options.seed
        generator = torch.Generator(device=linear.weight.device).manual_seed(options.seed * 100_003 + layers)
        layers += 1
        return SLTrainLinear(linear, options.rank, options.density, options.alpha, generator)

    return replace_targets(model, options, make)
