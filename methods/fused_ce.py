"""Fused linear cross-entropy as a model transform (kernels/fused_linear_ce.py): the causal-LM loss is computed
from the decoder's hidden states and the LM-head weight without materializing the batch × seq × vocab logits.
Works for any Hugging Face causal LM with get_decoder() and get_output_embeddings() (no LM-head bias).
The forward returns only the loss (logits=None), so the transform is for training and loss evaluation.
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Literal

import torch

from methods.options import INT64, Ranged, Rule, between, optional

# logits tile bytes as a fraction of the two gradients' bytes; below the targets' 2 % and 30 % by what cuBLAS and
# the per-row statistics take beside the tile. Speed mode gains from every byte: at LLaMA-3 shapes on an H200,
# 1.031–1.035 × compile at 0.25, 1.024–1.026 at 0.27, 1.007–1.012 at 0.295 (two interleaved runs, exploratory)
BUDGET = {"memory": 0.016, "speed": 0.295}
REPLACES = "the model's loss"  # a second loss transform would silently replace this one (harness/parts.py)
FILTER_EPS = 2.0**-12  # bf16 eps / 32: cut-cross-entropy's default gradient filter (kernels/fused_linear_ce.py)


@dataclass(frozen=True)
class Options(Ranged):
    RANGES = {"label_smoothing": between(0, 1, closed_high=True), "ignore_index": INT64,
              "filter_eps": optional(Rule("in (0, 1)", lambda v: isinstance(v, float) and 0 < v < 1))}

    mode: Literal["memory", "speed"] = "memory"
    label_smoothing: float = 0.0
    ignore_index: int = -100
    filter_eps: float | None = None  # e.g. FILTER_EPS: skip vocabulary slices whose softmax is below it; None: exact

    def __post_init__(self):
        super().__post_init__()
        if self.filter_eps is not None and self.label_smoothing != 0.0:
            raise ValueError(f"filter_eps={self.filter_eps} with label_smoothing={self.label_smoothing} is invalid: "
                             "filtering needs 0 < filter_eps < 1 and label_smoothing=0")


def shifted(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Predict token t+1 from position t: drop the last position and the first label."""
    return hidden[:, :-1].reshape(-1, hidden.shape[-1]), labels[:, 1:].reshape(-1)


def install_loss(model: torch.nn.Module, loss_fn) -> torch.nn.Module:
    """Make model(input_ids=…, labels=…) return SimpleNamespace(loss=loss_fn(hidden, head_weight, targets))."""
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        raise ValueError(f"{type(model).__name__} has no bias-free output embedding; a fused loss needs one")
    decoder = model.get_decoder()

    def forward(self, input_ids=None, labels=None, **kwargs):
        hidden = decoder(input_ids=input_ids, **kwargs).last_hidden_state
        h, targets = shifted(hidden, labels)
        return types.SimpleNamespace(loss=loss_fn(h, head.weight, targets), logits=None)

    model.forward = types.MethodType(forward, model)
    return model


def apply(model: torch.nn.Module, options: Options, device: torch.device) -> torch.nn.Module:
    from membench_kernels.fused_linear_ce import fused_linear_cross_entropy

    def loss_fn(h, weight, targets):
        return fused_linear_cross_entropy(h, weight, targets, ignore_index=options.ignore_index,
                                          label_smoothing=options.label_smoothing,
                                          budget_fraction=BUDGET[options.mode], filter_eps=options.filter_eps)

    return install_loss(model, loss_fn)
