"""GaLore (Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection", ICML 2024).

Every T steps the projection is refreshed from the SVD of the current gradient, G = U S Vᵀ: P = U[:, :r] (left)
or Q = V[:, :r] (right). Between refreshes: R = Pᵀ G, Adam on R (moments r × n, not m × n), and
    W ← W − lr · α · P N(R)     (α = scale; N = bias-corrected Adam direction; decoupled weight decay as AdamW)
applied to the attention and MLP matrices; other parameters get AdamW. Moments are kept across refreshes, as in
the paper's implementation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.lowrank import LowRankOptions, ProjectedAdamW, check_rank, split_groups


@dataclass(frozen=True)
class Options(LowRankOptions):
    pass


def svd_projection(grad: torch.Tensor, rank: int, side: str) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(grad, full_matrices=False)
    return u[:, :rank].contiguous() if side == "left" else vh[:rank, :].T.contiguous()


class GaLoreAdamW(ProjectedAdamW):
    def refresh(self, grad, state):
        state["side"] = self.side_of(grad)
        state["proj"] = svd_projection(grad, self.options.rank, state["side"])


check = check_rank
UPDATES_INT8_WEIGHTS = True  # its rule can run inside INT8 layers (methods/int8_weights.py)


def build(named_params, options: Options, device: torch.device) -> torch.optim.Optimizer:
    return GaLoreAdamW(split_groups(named_params, options), options)
