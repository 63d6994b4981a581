"""LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022), native.

Each target linear layer y = W x keeps W frozen and learns a rank-r update:
    y = W x + (α / r) · B A x,   A ∈ R^{r × in} (Kaiming-uniform init), B ∈ R^{out × r} (zeros: the model starts
unchanged). Every other parameter is frozen, so gradients and optimizer state exist for A and B only; with
train_rest the parameters outside the target layers (embeddings, norms, LM head) train too: LoRA as a pretraining
baseline on a random frozen base, as ReLoRA's code (Lialin et al., 2023) runs it for the GaLore paper's "LoRA" row.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from methods.options import COUNT, NAMES, POSITIVE, Ranged

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
REPLACES = "the target linear layers"  # a second transform that replaces them would find none (harness/parts.py)


@dataclass(frozen=True)
class Options(Ranged):
    RANGES = {"rank": COUNT, "alpha": POSITIVE, "targets": NAMES}  # alpha = 0 would freeze the adapters

    rank: int = 8
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    train_rest: bool = False  # embeddings, norms and head train as well (pretraining from a random base)


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module, in_features: int, out_features: int, rank: int, alpha: float,
                 dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.base, self.scaling = base, alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, in_features, dtype=dtype, device=device))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, dtype=dtype, device=device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scaling


def replace_linears(model: nn.Module, targets, make) -> int:
    """Replace every nn.Linear whose attribute name is in `targets` by make(linear); returns how many."""
    count = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if name in targets and isinstance(child, nn.Linear):
                setattr(module, name, make(child))
                count += 1
    return count


def replace_targets(model: nn.Module, options, make) -> nn.Module:
    """Replace every linear layer named in options.targets by make(linear), options.rank fitting each (the
    factorized, SLTrain and LOST transforms)."""
    def checked(linear: nn.Linear) -> nn.Module:
        if options.rank > min(linear.in_features, linear.out_features):
            raise ValueError(f"rank {options.rank} exceeds a target layer's size "
                             f"({linear.out_features} x {linear.in_features})")
        return make(linear)

    if replace_linears(model, set(options.targets), checked) == 0:
        raise ValueError(f"found no nn.Linear named {options.targets} in {type(model).__name__}")
    return model


def add_adapters(model: nn.Module, options: Options, make_base=lambda linear: linear) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(options.train_rest)

    def make(linear: nn.Linear) -> LoRALinear:
        linear.requires_grad_(False)  # the base of a target layer is frozen either way
        if options.rank > min(linear.in_features, linear.out_features):
            raise ValueError(f"LoRA rank {options.rank} exceeds a target layer's size "
                             f"({linear.out_features} x {linear.in_features})")
        return LoRALinear(make_base(linear), linear.in_features, linear.out_features, options.rank, options.alpha,
                          linear.weight.dtype, linear.weight.device)

    if replace_linears(model, set(options.targets), make) == 0:
        raise ValueError(f"LoRA found no nn.Linear named {options.targets} in {type(model).__name__}")
    return model


def target_shapes(targets, model_spec) -> dict[str, tuple[int, int]] | None:
    """Plan-time: (out, in) of each target layer, every target naming a linear layer of the model; None where the
    model's layers are known only once it is built (a hub model)."""
    if not hasattr(model_spec, "linear_shapes"):
        return None
    shapes = model_spec.linear_shapes()
    unknown = [t for t in targets if t not in shapes]
    if unknown:
        raise ValueError(f"targets={list(targets)} names {unknown[0]!r}, which is no linear layer of model "
                         f"{model_spec.name}; allowed: {', '.join(shapes)}")
    return {t: shapes[t] for t in targets}


def check(options: Options, model_spec) -> None:
    """Plan-time: the targets exist and the rank fits the smallest side of every target layer."""
    shapes = target_shapes(options.targets, model_spec)
    smallest = min(min(shape) for shape in shapes.values()) if shapes else None
    if smallest is not None and options.rank > smallest:
        raise ValueError(f"rank={options.rank} exceeds the smallest side ({smallest}) of the target layers of model "
                         f"{model_spec.name}; use rank <= {smallest}")


def apply(model: nn.Module, options: Options, device: torch.device) -> nn.Module:
    return add_adapters(model, options)
