"""LISA (Pan et al., "LISA: Layerwise Importance Sampling for Memory-Efficient Large Language Model Fine-Tuning",
NeurIPS 2024): AdamW where, every K steps, only γ decoder layers drawn uniformly at random (plus the embeddings,
the final norm and the LM head, always) are trainable; the rest are frozen and their optimizer state is dropped.
Gradients and Adam moments therefore exist for γ layers at a time.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from methods.adamw import AdamHyperparameters
from methods.options import COUNT, SEED

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass(frozen=True)
class Options(AdamHyperparameters):
    RANGES = {"active_layers": COUNT, "interval": COUNT, "seed": SEED}

    active_layers: int = 2  # γ
    interval: int = 20  # K
    seed: int = 0


def check(options: Options, model_spec) -> None:
    """Plan-time: γ layers can be drawn from the model's."""
    layers = getattr(model_spec, "num_hidden_layers", None)
    if layers is not None and options.active_layers > layers:
        raise ValueError(f"active_layers={options.active_layers} exceeds model {model_spec.name}'s {layers} layers; "
                         f"use active_layers <= {layers}")


class LISAAdamW(torch.optim.AdamW):
    def __init__(self, named_params, options: Options):
        super().__init__([p for _, p in named_params], lr=options.lr, betas=tuple(options.betas), eps=options.eps,
                         weight_decay=options.weight_decay, foreach=False)
        self.layers: dict[int, list[torch.Tensor]] = {}
        for name, p in named_params:
            match = _LAYER.search(name)
            if match:
                self.layers.setdefault(int(match.group(1)), []).append(p)
        self.options, self.steps = options, 0
        self.generator = torch.Generator().manual_seed(options.seed)
        self.active: list[int] = []
        self.resample()

    def resample(self) -> None:
        order = torch.randperm(len(self.layers), generator=self.generator).tolist()
        indices = sorted(self.layers)
        self.active = sorted(indices[i] for i in order[: self.options.active_layers])
        for index, params in self.layers.items():
            for p in params:
                p.requires_grad_(index in self.active)
                if index not in self.active:
                    self.state.pop(p, None)  # a frozen layer keeps no Adam moments
                    p.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        self.steps += 1
        if self.steps % self.options.interval == 0:
            self.resample()
        return loss


def build(named_params, options: Options, device: torch.device) -> torch.optim.Optimizer:
    return LISAAdamW(named_params, options)
