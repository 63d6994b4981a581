"""APOLLO (Zhu et al., "APOLLO: SGD-like Memory, AdamW-level Performance", MLSys 2025).

A random projection P ~ N(0, 1/r) (r × m, regenerated from a seed every T steps) compresses the gradient,
R = P G; Adam runs on R only, and its direction R̃ = M̂ / (√V̂ + ε) is used just to rescale the raw gradient:
    s_j = ‖R̃[:, j]‖ / ‖R[:, j]‖   (channel-wise; tensor-wise for APOLLO-Mini: s = ‖R̃‖ / ‖R‖)
    G̃ = G · diag(s),   if ‖G̃_t‖ > γ ‖G̃_{t−1}‖: G̃_t ← G̃_t · γ ‖G̃_{t−1}‖ / ‖G̃_t‖   (norm-growth limiter, γ = 1.01)
    W ← W − lr · α · c_t · G̃,   c_t = √(1−β2^t) / (1−β1^t)
with R̃ = M / (√V + ε) taken before bias correction and c_t applied at the end, as the reference implementation
(apollo-torch) does.
Channels are the columns when the projection is on the left (m ≤ n) and the rows otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from methods.lowrank import LowRankOptions, ProjectedAdamW, check_rank, split_groups


@dataclass(frozen=True)
class Options(LowRankOptions):
    rank: int = 256
    scale: float = 1.0
    scaling: Literal["channel", "tensor"] = "channel"
    growth_limit: float = 1.01
    seed: int = 0


def limit_growth(update: torch.Tensor, state: dict, key: str, gamma: float) -> torch.Tensor:
    """Norm-growth limiter (APOLLO §3.3, Fira §4.2): the update's norm may grow by at most γ per step. On the device
    (torch.where, no `if` on a tensor): a host synchronization per matrix per step would stall the GPU."""
    norm = update.norm()
    previous = state.get(key)
    if previous is not None:
        limit = gamma * previous
        update = update * torch.where(norm > limit, limit / norm, 1.0).to(update.dtype)
        norm = torch.minimum(norm, limit)
    state[key] = norm
    return update


class ApolloAdamW(ProjectedAdamW):
    def refresh(self, grad, state):
        state["side"] = self.side_of(grad)
        short = min(grad.shape)
        gen = torch.Generator(device=grad.device)
        gen.manual_seed(self.options.seed * 1_000_003 + state["step"] * 7919 + grad.shape[0] * 31 + grad.shape[1])
        # Stored as the short side × r matrix; down/back use it as Pᵀ (left) or Q (right) like GaLore's.
        state["proj"] = torch.randn(short, self.options.rank, generator=gen, device=grad.device) / self.options.rank**0.5

    def full_update(self, grad, low_grad, direction, state, group):
        # As apollo-torch does: the scaling and the limiter see the direction without Adam's bias correction,
        # which is applied to the final step instead (the limiter then ignores the bias correction's decay).
        beta1, beta2 = group["betas"]
        correction = (1 - beta2 ** state["step"]) ** 0.5 / (1 - beta1 ** state["step"])
        uncorrected = direction / correction
        channel_dim = 0 if state["side"] == "left" else 1  # norms over the projected dimension
        if self.options.scaling == "tensor":
            update = grad * (uncorrected.norm() / low_grad.float().norm().clamp(min=1e-12)).to(grad.dtype)
        else:
            factor = uncorrected.norm(dim=channel_dim) / low_grad.float().norm(dim=channel_dim).clamp(min=1e-12)
            factor = factor.to(grad.dtype)
            update = grad * (factor.unsqueeze(0) if channel_dim == 0 else factor.unsqueeze(1))
        update = limit_growth(update, state, "prev_norm", self.options.growth_limit)
        return self.options.scale * correction * update


check = check_rank
UPDATES_INT8_WEIGHTS = True  # its rule can run inside INT8 layers (methods/int8_weights.py)


def build(named_params, options: Options, device: torch.device) -> torch.optim.Optimizer:
    return ApolloAdamW(split_groups(named_params, options), options)
