"""GaLore (Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection", ICML 2024).

Every T steps the projection is refreshed from the SVD of the current gradient, G = U S Vᵀ: P = U[:, :r] (left)
or Q = V[:, :r] (right) — by default computed as the top eigenvectors of G Gᵀ (Gᵀ G), `projection: svd` for
torch.linalg.svd as galore-torch does (eigh_projection says why). Between refreshes: R = Pᵀ G, Adam on R (moments
r × n, not m × n), and
    W ← W − lr · α · P N(R)     (α = scale; N = bias-corrected Adam direction; decoupled weight decay as AdamW)
applied to the attention and MLP matrices; other parameters get AdamW. Moments are kept across refreshes, as in
the paper's implementation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from methods.lowrank import LowRankOptions, ProjectedAdamW, check_rank, float32_at_least, split_groups


@dataclass(frozen=True)
class Options(LowRankOptions):
    projection: Literal["eigh", "svd"] = "eigh"  # how the top-r singular vectors are computed: PROJECTIONS


def svd_projection(grad: torch.Tensor, rank: int, side: str) -> torch.Tensor:
    """U[:, :r] (left) or V[:, :r] (right) of G = U S Vᵀ in fp32 or better, LAPACK's signs: what galore-torch does."""
    u, _, vh = torch.linalg.svd(grad.to(float32_at_least(grad)), full_matrices=False)
    return u[:, :rank].contiguous() if side == "left" else vh[:rank, :].T.contiguous()


def gram(grad: torch.Tensor, side: str, chunk: int = 1024) -> torch.Tensor:
    """G Gᵀ (left) or Gᵀ G (right) in fp32 or better, accumulated over `chunk` columns of the long side at a time so
    that no fp32 copy of the whole of G is made."""
    wide = grad if side == "left" else grad.T
    out = torch.zeros(wide.shape[0], wide.shape[0], dtype=float32_at_least(grad), device=grad.device)
    for start in range(0, wide.shape[1], chunk):
        part = wide[:, start:start + chunk].to(out.dtype)
        out.addmm_(part, part.T)
    return out


def eigh_projection(grad: torch.Tensor, rank: int, side: str) -> torch.Tensor:
    """The same subspace as svd_projection: G's left singular vectors are the eigenvectors of G Gᵀ, its right ones
    those of Gᵀ G, by decreasing eigenvalue σ². One symmetric eigendecomposition of the short side's square
    (divide and conquer, a fixed cost) instead of an SVD of G, which also returns the long side's m × n factor; the
    vectors' signs are the eigensolver's, not LAPACK's SVD's. Precision: eigenvectors of σ² lose accuracy where
    σ_j² − σ_{j+1}² is within fp32 rounding of σ_1², far below the bf16 the projection is applied in."""
    _, vectors = torch.linalg.eigh(gram(grad, side))
    return vectors[:, -rank:].flip(1).contiguous()


PROJECTIONS = {"eigh": eigh_projection, "svd": svd_projection}


class GaLoreAdamW(ProjectedAdamW):
    def top_singular_vectors(self, grad: torch.Tensor, side: str) -> torch.Tensor:
        return PROJECTIONS[self.options.projection](grad, self.options.rank, side)

    def refresh(self, grad, state):
        state["side"] = self.side_of(grad)
        state["proj"] = self.top_singular_vectors(grad, state["side"])


check = check_rank
UPDATES_INT8_WEIGHTS = True  # its rule can run inside INT8 layers (methods/int8_weights.py)


def build(named_params, options: Options, device: torch.device) -> torch.optim.Optimizer:
    return GaLoreAdamW(split_groups(named_params, options), options)
