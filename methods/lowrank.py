"""The private base of the gradient-projection optimizers (GaLore, 8-bit GaLore, APOLLO, APOLLO-Mini, Fira,
FRUGAL): AdamW whose moments live in an r-dimensional subspace for the attention / MLP matrices, plain AdamW for
every other parameter (moments in the parameter's dtype, as torch.optim.AdamW and the reference packages keep
them). A variant says how to refresh the projection, how to go down to the subspace, and how to turn the subspace's
Adam direction into a full-size update.

For a matrix gradient G (m × n) the subspace is taken along the shorter side: left, R = Pᵀ G (r × n) when m < n;
right, R = G Q (m × r) otherwise (square matrices on the right, as galore-torch and apollo-torch do). Moments M, V
are r × n (or m × r); the Adam direction is N = M̂ / (√V̂ + ε). Projections, moments and updates are in the
gradient's dtype, as in the reference packages.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from membench_kernels.common import to_device_async
from methods.adamw import AdamHyperparameters
from methods.options import COUNT, NAMES, POSITIVE

BATCH_BYTES = 128 * 2**20  # projected gradients per batch of matrices in one step (ProjectedAdamW.batches)


@dataclass(frozen=True)
class LowRankOptions(AdamHyperparameters):
    RANGES = {"rank": COUNT, "update_gap": COUNT, "scale": POSITIVE, "target_modules": NAMES}

    rank: int = 128
    update_gap: int = 200  # steps between projection refreshes
    scale: float = 0.25  # α applied to the projected-back update
    target_modules: list[str] = field(default_factory=lambda: ["self_attn", "mlp"])


def float32_at_least(tensor: torch.Tensor) -> torch.dtype:
    return torch.promote_types(tensor.dtype, torch.float32)


def check_rank(options, model_spec) -> None:
    """Plan-time: the rank must fit the smallest side of the projected matrices (the hidden size for LLaMA), and
    each target module must pick some matrix (else none is projected and the method is plain AdamW)."""
    smallest = getattr(model_spec, "hidden_size", None)
    if smallest is not None and options.rank > smallest:
        raise ValueError(f"rank={options.rank} exceeds the smallest side ({smallest}) of the "
                         f"projected matrices of model {model_spec.name}; use rank <= {smallest}")
    names = model_spec.matrix_names() if hasattr(model_spec, "matrix_names") else None
    unmatched = [t for t in options.target_modules if names is not None and not any(t in n for n in names)]
    if unmatched:
        raise ValueError(f"target_modules={list(options.target_modules)}: {unmatched[0]!r} is part of no matrix name "
                         f"of model {model_spec.name} (they read like {names[1]})")


def auto_rank(smallest_side: int) -> int:
    """rank: auto — a quarter of the smallest side of the projected matrices (the hidden size for LLaMA): GaLore's
    choice (Zhao et al., 2024: rank 128 at hidden 512, 512 at 2048; 256 at 768 and 1024), which APOLLO, Fira, FRUGAL
    and Q-GaLore keep."""
    return max(1, smallest_side // 4)


def split_groups(named_params, options) -> list[dict]:
    projected = [p for n, p in named_params if p.dim() == 2 and any(t in n for t in options.target_modules)]
    ids = {id(p) for p in projected}
    rest = [p for _, p in named_params if id(p) not in ids]
    return [g for g in ({"params": projected, "project": True}, {"params": rest, "project": False}) if g["params"]]


def fused_adamw(params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict], lr: float,
                betas: tuple[float, float], weight_decay: float, eps: float) -> None:
    """One AdamW step, p ← p (1 − lr λ) − lr · M̂ / (√V̂ + ε), by torch's fused kernel for each (device, dtype) as
    it needs them grouped, with moments states[i]["exp_avg"], ["exp_avg_sq"] and the step count states[i]["step"]
    (already advanced). The kernel reads step counts from the device: they are made for the call (one small
    temporary per group), not kept in the states, where they would hold a block of device memory all along."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault((p.device, p.dtype), []).append(i)
    for (device, _), members in groups.items():
        counts = [float(states[i]["step"]) for i in members]
        steps = (torch.full((len(counts),), counts[0], device=device) if len(set(counts)) == 1
                 else to_device_async(counts, torch.float32, device))
        torch._fused_adamw_([params[i] for i in members], [grads[i] for i in members],
                            [states[i]["exp_avg"] for i in members], [states[i]["exp_avg_sq"] for i in members], [],
                            list(steps.unbind()), lr=lr, beta1=betas[0], beta2=betas[1], weight_decay=weight_decay,
                            eps=eps, amsgrad=False, maximize=False)


class ProjectedAdamW(torch.optim.Optimizer):
    def __init__(self, groups, options):
        defaults = dict(lr=options.lr, betas=tuple(options.betas), eps=options.eps,
                        weight_decay=options.weight_decay, project=False)
        super().__init__(groups, defaults)
        self.options = options

    # --- what a variant overrides ---------------------------------------------------------------------------
    def refresh(self, grad: torch.Tensor, state: dict) -> None:
        """Set state['proj'] (and state['side']) from the current gradient."""
        raise NotImplementedError

    def down(self, grad: torch.Tensor, state: dict) -> torch.Tensor:
        proj = state["proj"].to(grad.dtype)
        return proj.T @ grad if state["side"] == "left" else grad @ proj

    def back(self, low: torch.Tensor, state: dict) -> torch.Tensor:
        proj = state["proj"].to(low.dtype)
        return proj @ low if state["side"] == "left" else low @ proj.T

    def full_update(self, grad: torch.Tensor, low_grad: torch.Tensor, direction: torch.Tensor, state: dict,
                    group: dict):
        """The full-size update (in the gradient's dtype) from the raw gradient, its projection and the subspace
        Adam direction."""
        return self.back((self.options.scale * direction).to(grad.dtype), state)

    # --- the shared loop --------------------------------------------------------------------------------------
    def adam_directions(self, lows: list[torch.Tensor], states: list[dict], group: dict) -> list[torch.Tensor]:
        """Bias-corrected Adam directions of the projected gradients, all parameters at once, in the gradients' dtype
        (the moments too, as galore-torch and apollo-torch keep them): torch's fused AdamW kernel, stepping zeroed
        "parameters" with lr = −1, leaves N = M̂ / (√V̂ + ε) in them — one pass over the moments instead of the nine
        of the same rule in foreach operations (at 1B, APOLLO's rank-256 moments are 163 M values per step)."""
        for low, state in zip(lows, states, strict=True):
            if "exp_avg" not in state:
                state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(low), torch.zeros_like(low)
        directions = [torch.zeros_like(low) for low in lows]
        fused_adamw(directions, lows, states, -1.0, group["betas"], 0.0, group["eps"])
        return directions

    def due_for_refresh(self, state: dict) -> bool:
        return (state["step"] - 1) % self.options.update_gap == 0

    def project(self, grad: torch.Tensor, state: dict) -> torch.Tensor:
        """Advance `state` by one step (refreshing the projection when due) and return the projected gradient."""
        state["step"] = state.get("step", 0) + 1
        if self.due_for_refresh(state):
            self.refresh(grad, state)
            if "proj" in state:  # projections are applied in the gradient's dtype (tensor cores), as the references do
                state["proj"] = state["proj"].to(grad.dtype)
        return self.down(grad, state)

    def update_of(self, grad: torch.Tensor, state: dict, group: dict) -> torch.Tensor:
        """The update direction for one gradient (lr and weight decay not applied); advances `state`."""
        low = self.project(grad, state)
        return self.full_update(grad, low, self.adam_directions([low], [state], group)[0], state, group)

    def attach_quantized(self, model: torch.nn.Module) -> None:
        """Let INT8-weight layers (methods/int8_weights.py) call this optimizer's rule from their backward:
        their gradient is projected, turned into an update and applied to the INT8 weights at once."""
        from methods.int8_weights import Int8Linear

        layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
        if not layers:
            return
        self.add_param_group({"params": [], "project": True, "int8": True})
        group = self.param_groups[-1]
        for layer in layers:
            layer.updater = lambda grad, layer=layer: layer.apply_update(
                self.update_of(grad, self.state[layer.codes], group), group["lr"], group["weight_decay"])

    @staticmethod
    def side_of(grad: torch.Tensor) -> str:
        return "left" if grad.shape[0] < grad.shape[1] else "right"

    def full_rank_step(self, params: list[torch.Tensor], group: dict) -> None:
        """Plain AdamW for the parameters outside the subspace (embeddings, head, norms), moments in the parameter's
        dtype as torch.optim.AdamW and the reference packages keep them, through the fused kernel (no full-size
        temporaries; at 7B the embedding alone is 131 M values)."""
        for p in params:
            state = self.state[p]
            if not state:
                state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            state["step"] += 1
        fused_adamw(params, [p.grad for p in params], [self.state[p] for p in params], group["lr"], group["betas"],
                    group["weight_decay"], group["eps"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:  # e.g. the group of INT8 layers: they update from their own backward (attach_quantized)
                continue
            if not group["project"]:
                self.full_rank_step(params, group)
                continue
            for batch in self.batches(params):
                states = [self.state[p] for p in batch]
                lows = [self.project(p.grad, state) for p, state in zip(batch, states, strict=True)]
                self.apply_updates(batch, lows, self.adam_directions(lows, states, group), states, group)
        return loss

    def batches(self, params: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
        """Consecutive matrices whose projected gradients (rank × the long side) add up to at most BATCH_BYTES: a
        step's foreach launches take a batch at a time, so its temporaries (projected gradients, Adam directions)
        stay bounded by the batch, not by the model (at 7B and rank 256 the projected gradients alone are 0.8 GB)."""
        batch, size = [], 0
        for p in params:
            low_bytes = self.options.rank * max(p.shape) * p.element_size()
            if batch and size + low_bytes > BATCH_BYTES:
                yield batch
                batch, size = [], 0
            batch.append(p)
            size += low_bytes
        if batch:
            yield batch

    def apply_updates(self, params, lows, directions, states, group) -> None:
        """W ← W (1 − lr λ) − lr · update, one matrix at a time (one full-size update alive at once)."""
        for p, state, low, direction in zip(params, states, lows, directions, strict=True):
            update = self.full_update(p.grad, low, direction, state, group)
            if group["weight_decay"]:
                p.mul_(1 - group["lr"] * group["weight_decay"])
            p.add_(update, alpha=-group["lr"])  # the update is in the parameter's dtype: no cast copy
