"""ZO-Adam (as benchmarked in ZO-Bench, Zhang et al., "Revisiting Zeroth-Order Optimization for Memory-Efficient
LLM Fine-Tuning", ICML 2024): Adam driven by MeZO's gradient estimate ĝ z (methods/mezo.py):
    g = ĝ z;  m = β1 m + (1−β1) g;  v = β2 v + (1−β2) g²;  θ ← θ(1 − lr λ) − lr m̂ / (√v̂ + ε_adam)
Forward-only like MeZO, but with two parameter-sized moments.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from methods.mezo import MeZO
from methods.options import BETAS, NON_NEGATIVE, POSITIVE, SEED, Ranged

LOOP = "zeroth_order"


@dataclass(frozen=True)
class Options(Ranged):
    RANGES = {"lr": POSITIVE, "eps": POSITIVE, "betas": BETAS, "adam_eps": POSITIVE, "weight_decay": NON_NEGATIVE,
              "seed": SEED}

    lr: float = 1e-4
    eps: float = 1e-3  # perturbation size
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    seed: int = 0


class ZOAdam(MeZO):
    def __init__(self, params, options):
        super().__init__(params, options)
        self.betas, self.adam_eps = tuple(options.betas), options.adam_eps

    def update(self, p, z, projected_grad, group, state):
        if "exp_avg" not in state:
            state["step"], state["exp_avg"], state["exp_avg_sq"] = 0, torch.zeros_like(p), torch.zeros_like(p)
        state["step"] += 1
        t, (b1, b2) = state["step"], self.betas
        g = z.mul_(projected_grad)
        state["exp_avg"].lerp_(g, 1 - b1)
        state["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        denom = (state["exp_avg_sq"] / (1 - b2**t)).sqrt_().add_(self.adam_eps)
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - b1**t))


def build(named_params, options: Options, device: torch.device) -> torch.optim.Optimizer:
    return ZOAdam([p for _, p in named_params], options)
