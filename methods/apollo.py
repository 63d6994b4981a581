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

from methods.lowrank import LowRankOptions, ProjectedAdamW, check_rank, float32_at_least, split_groups
from methods.options import SEED, at_least


@dataclass(frozen=True)
class Options(LowRankOptions):
    RANGES = {"growth_limit": at_least(1), "seed": SEED}  # γ < 1 would shrink every update towards 0

    rank: int = 256
    scale: float = 1.0
    scaling: Literal["channel", "tensor"] = "channel"
    growth_limit: float = 1.01
    seed: int = 0


def growth_ratios(norms: list[torch.Tensor], states: list[dict], key: str, gamma: float,
                  scale: float = 1.0) -> list[torch.Tensor]:
    """Norm-growth limiter (APOLLO §3.3, Fira §4.2): an update's norm may grow by at most γ per step, so the update
    U_t is to be multiplied by min(1, γ ‖U_{t−1}‖ / ‖U_t‖) (and by `scale`); returns those multipliers for the
    norms ‖U_t‖ given and records the limited norms in the states. All matrices in a few foreach launches, on the
    device (no `if` on a tensor: a host synchronization per matrix would stall the GPU)."""
    previous = [s[key] if key in s else torch.full_like(n, float("inf")) for s, n in zip(states, norms, strict=True)]
    limits = torch._foreach_mul(previous, gamma)
    ratios = torch._foreach_div(limits, torch._foreach_clamp_min(norms, 1e-30))  # 0 / 0 (a zero update) gives 0
    torch._foreach_clamp_max_(ratios, 1.0)
    torch._foreach_mul_(ratios, scale)
    for state, norm in zip(states, torch._foreach_minimum(norms, limits), strict=True):
        state[key] = norm
    return ratios


def growth_ratio(norm: torch.Tensor, state: dict, key: str, gamma: float, scale: float = 1.0) -> torch.Tensor:
    """growth_ratios for one update, in plain tensor operations (the layer-wise loop steps one matrix at a time,
    where foreach launches over lists of one cost the host more than the GPU's work)."""
    limit = state[key] * gamma if key in state else torch.full_like(norm, float("inf"))
    ratio = (limit / norm.clamp_min(1e-30)).clamp_max_(1.0).mul_(scale)
    state[key] = torch.minimum(norm, limit)
    return ratio


def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.stack, but one tensor is a view, not a copy: the layer-wise loop updates one matrix at a time."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def limit_growth(updates: list[torch.Tensor], states: list[dict], key: str, gamma: float) -> None:
    """The norm-growth limiter applied in place to a list of updates."""
    norms = torch._foreach_norm(updates, dtype=float32_at_least(updates[0]))
    torch._foreach_mul_(updates, growth_ratios(norms, states, key, gamma))


class ApolloAdamW(ProjectedAdamW):
    def refresh(self, grad, state):
        state["side"] = self.side_of(grad)
        short = min(grad.shape)
        gen = torch.Generator(device=grad.device)
        gen.manual_seed(self.options.seed * 1_000_003 + state["step"] * 7919 + grad.shape[0] * 31 + grad.shape[1])
        # Stored as the short side × r matrix; down/back use it as Pᵀ (left) or Q (right) like GaLore's.
        state["proj"] = torch.randn(short, self.options.rank, generator=gen, device=grad.device) / self.options.rank**0.5

    def scaling_factors(self, lows, directions, states) -> list[tuple[list[int], torch.Tensor]]:
        """s' = ‖R̃'‖ / ‖R‖ per channel (per matrix, tensor-wise), R̃' the direction before bias correction, in fp32,
        for the matrices of one shape and side at a time: [(their indices, s' stacked: k × 1 × n on the left,
        k × m × 1 on the right, k tensor-wise)]. Stacked, the norms take a few launches per shape for the whole
        model, not a few per matrix."""
        groups: dict[tuple, list[int]] = {}
        for i, (low, state) in enumerate(zip(lows, states, strict=True)):
            groups.setdefault((low.shape, state["side"]), []).append(i)
        stacked = []
        for (_, side), members in groups.items():
            # over the projected dimension: R's rows on the left (r × n), its columns on the right (m × r)
            dims = (1, 2) if self.options.scaling == "tensor" else (1 if side == "left" else 2)
            low_norms, direction_norms = (
                torch.linalg.vector_norm(stack([tensors[i] for i in members]), dim=dims,
                                         keepdim=self.options.scaling != "tensor",
                                         dtype=float32_at_least(tensors[members[0]])) for tensors in (lows, directions))
            stacked.append((members, direction_norms / low_norms.clamp_(min=1e-12)))
        return stacked

    def channel_norms(self, grads, states) -> list[torch.Tensor]:
        """‖G‖ over each channel (the whole matrix, tensor-wise), fp32, shaped like the scaling factors."""
        dtype = float32_at_least(grads[0])
        if self.options.scaling == "tensor":
            return list(torch._foreach_norm(grads, dtype=dtype))
        return [torch.linalg.vector_norm(g, dim=0 if s["side"] == "left" else 1, keepdim=True, dtype=dtype)
                for g, s in zip(grads, states, strict=True)]

    def update_factors(self, grads, lows, directions, states, group) -> list[torch.Tensor]:
        """Per matrix the multiplier f, in G's dtype, with update = G · f = α · c · min(1, limiter) · G · s and
        s = s' / c (c = √(1−β2^t) / (1−β1^t)). As apollo-torch does, s and the limiter see the direction without
        Adam's bias correction c, which is applied to the final step instead; so G · s' is G · s · c, and c cancels
        but in the limiter's norms. The limiter's ‖G · s'‖ comes from G's channel norms, ‖G · s'‖² = Σ_j s'_j² ‖G_j‖²:
        G is read for them once and never rewritten, and the parameter update reads it once more. Per matrix the
        work is one norm; the factors are scaled and cast per shape (at 1B a matrix's own launches cost the host
        more than they cost the GPU)."""
        if len(grads) == 1:
            return [self.update_factor(grads[0], lows[0], directions[0], states[0], group)]
        groups = self.scaling_factors(lows, directions, states)
        factors = [None] * len(grads)
        for members, stacked in groups:
            for i, factor in zip(members, stacked.unbind(0), strict=True):
                factors[i] = factor
        norms = torch._foreach_norm(torch._foreach_mul(self.channel_norms(grads, states), factors))
        beta1, beta2 = group["betas"]
        torch._foreach_div_(norms, [(1 - beta2 ** s["step"]) ** 0.5 / (1 - beta1 ** s["step"]) for s in states])
        ratios = growth_ratios(norms, states, "prev_norm", self.options.growth_limit, scale=self.options.scale)
        for members, stacked in groups:
            scale = stack([ratios[i] for i in members]).view(-1, *(1,) * (stacked.dim() - 1))
            for i, factor in zip(members, (stacked * scale).to(grads[members[0]].dtype).unbind(0), strict=True):
                factors[i] = factor
        return factors

    def update_factor(self, grad, low, direction, state, group) -> torch.Tensor:
        """update_factors for one matrix in plain tensor operations: at 7b the layer-wise loop's host time per
        matrix, not the GPU, set the step time (stacking, unbinding and foreach launches over lists of one took
        twice apollo-torch's host time)."""
        tensorwise = self.options.scaling == "tensor"
        dims = (0, 1) if tensorwise else (0 if state["side"] == "left" else 1)
        low_norm, direction_norm = (torch.linalg.vector_norm(t, dim=dims, keepdim=not tensorwise,
                                                             dtype=float32_at_least(low)) for t in (low, direction))
        factor = direction_norm / low_norm.clamp_(min=1e-12)
        beta1, beta2 = group["betas"]
        bias_correction = (1 - beta2 ** state["step"]) ** 0.5 / (1 - beta1 ** state["step"])
        norm = torch.linalg.vector_norm(self.channel_norms([grad], [state])[0] * factor) / bias_correction
        ratio = growth_ratio(norm, state, "prev_norm", self.options.growth_limit, scale=self.options.scale)
        return (factor * ratio).to(grad.dtype)

    def full_update(self, grad, low_grad, direction, state, group):
        return grad.mul_(self.update_factors([grad], [low_grad], [direction], [state], group)[0])

    def apply_updates(self, params, lows, directions, states, group) -> None:
        """All matrices at once, W ← W (1 − lr λ) − lr · G · f: no update tensor is made, G is only read."""
        grads = [p.grad for p in params]
        factors = self.update_factors(grads, lows, directions, states, group)
        if group["weight_decay"]:
            torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
        torch._foreach_addcmul_(params, grads, factors, value=-group["lr"])


check = check_rank
UPDATES_INT8_WEIGHTS = True  # its rule can run inside INT8 layers (methods/int8_weights.py)


def build(named_params, options: Options, device: torch.device) -> torch.optim.Optimizer:
    return ApolloAdamW(split_groups(named_params, options), options)
