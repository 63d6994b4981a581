"""MeZO (Malladi et al., "Fine-Tuning Language Models with Just Forward Passes", NeurIPS 2023): ZO-SGD with the
perturbation regenerated from a seed, so it is never stored.

    z ~ N(0, I) from seed s_t;   ℓ± = L(θ ± ε z);   ĝ = (ℓ+ − ℓ−) / (2ε);   θ ← θ − lr · ĝ · z
θ is perturbed in place parameter by parameter (+εz, −2εz, +εz), so memory is that of inference plus one
parameter-sized temporary. No backward pass, no gradients, no optimizer state (ZO-Adam adds Adam moments of ĝ·z).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.options import NON_NEGATIVE, POSITIVE, SEED, Ranged

LOOP = "zeroth_order"


@dataclass(frozen=True)
class Options(Ranged):
    RANGES = {"lr": POSITIVE, "eps": POSITIVE, "weight_decay": NON_NEGATIVE, "seed": SEED}

    lr: float = 1e-6
    eps: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0


class MeZO(torch.optim.Optimizer):
    def __init__(self, params, options):
        super().__init__(params, dict(lr=options.lr, eps=options.eps, weight_decay=options.weight_decay))
        self.seed, self.steps = options.seed, 0

    def _perturb(self, seed: int, scale: float) -> None:
        for group in self.param_groups:
            for i, p in enumerate(group["params"]):
                p.add_(self._z(p, seed, i), alpha=scale)

    @staticmethod
    def _z(p: torch.Tensor, seed: int, index: int) -> torch.Tensor:
        # modulo torch's seed range: a large options.seed would overflow it (smaller ones are unchanged)
        gen = torch.Generator(device=p.device).manual_seed((seed * 100_003 + index) % 2**64)
        return torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)

    def update(self, p: torch.Tensor, z: torch.Tensor, projected_grad: float, group: dict, state: dict) -> None:
        """ZO-SGD: θ ← θ − lr (ĝ z + λ θ)."""
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(z, alpha=-group["lr"] * projected_grad)

    @torch.no_grad()
    def step(self, closure):
        self.steps += 1
        seed = self.seed * 1_000_003 + self.steps
        eps = self.param_groups[0]["eps"]
        self._perturb(seed, eps)
        loss_plus = closure()
        self._perturb(seed, -2 * eps)
        loss_minus = closure()
        self._perturb(seed, eps)
        projected_grad = float(loss_plus - loss_minus) / (2 * eps)
        for group in self.param_groups:
            for i, p in enumerate(group["params"]):
                self.update(p, self._z(p, seed, i), projected_grad, group, self.state[p])
        return (loss_plus + loss_minus) / 2


def build(named_params, options: Options, device: torch.device) -> torch.optim.Optimizer:
    return MeZO([p for _, p in named_params], options)
