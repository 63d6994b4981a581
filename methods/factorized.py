"""Low-rank factorized training from scratch: the "Low-Rank" baseline of the GaLore paper (Zhao et al., 2024,
Table 2, after Kamalakara et al., "Exploring Low Rank Training of Deep Neural Networks", 2022).

Each target linear layer y = W x loses W and trains two factors instead:
    y = B A x,   B ∈ R^{out × r},  A ∈ R^{r × in},
so its weight has rank at most r for the whole run (unlike LoRA, no full-rank base is kept, and unlike GaLore the
weights themselves are low-rank, not their updates). Spectral initialization (Khodak et al., 2021): from the SVD of
the layer's random initial weight, W₀ = U S Vᵀ, B = U_r √S_r and A = √S_r V_rᵀ, so B A starts as the best rank-r
approximation of the usual initialization. Every other parameter (embeddings, norms, LM head) trains as before.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from methods.lora import DEFAULT_TARGETS, REPLACES, check, replace_targets  # noqa: F401  (targets, checks as LoRA's)
from methods.options import COUNT, NAMES, Ranged


@dataclass(frozen=True)
class Options(Ranged):
    RANGES = {"rank": COUNT, "targets": NAMES}

    rank: int = 128
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))


def spectral_factors(weight: torch.Tensor, rank: int):
    """B = U_r √S_r (out × r) and A = √S_r V_rᵀ (r × in), so that BA is W's best rank-r approximation, in W's dtype,
    with the SVD (U, S, Vᵀ) they come from (float32 or wider)."""
    u, s, vh = torch.linalg.svd(weight.to(torch.promote_types(weight.dtype, torch.float32)), full_matrices=False)
    root = s[:rank].sqrt()
    # contiguous: the SVD's factors are column-major, and FSDP2 (like some kernels) takes no strided parameter
    b = (u[:, :rank] * root).to(weight.dtype).contiguous()
    a = (root[:, None] * vh[:rank]).to(weight.dtype).contiguous()
    return b, a, (u, s, vh)


class FactorizedLinear(nn.Module):
    def __init__(self, linear: nn.Linear, rank: int):
        super().__init__()
        b, a, _ = spectral_factors(linear.weight.detach(), rank)
        self.b, self.a = nn.Parameter(b), nn.Parameter(a)  # out × r, r × in
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (x @ self.a.T) @ self.b.T
        return y if self.bias is None else y + self.bias


def apply(model: nn.Module, options: Options, device: torch.device) -> nn.Module:
    return replace_targets(model, options, lambda linear: FactorizedLinear(linear, options.rank))
