"""Activation checkpointing (Chen et al., "Training Deep Nets with Sublinear Memory Cost", 2016).

Each decoder layer keeps only its input during the forward pass and recomputes its internals in the backward
pass: activation memory drops from O(L · per-layer activations) to O(L · hidden) + one layer's, for ~1/3 more
forward compute. Uses the model's own non-reentrant checkpointing (any Hugging Face causal LM supports it).
"""
from __future__ import annotations

import torch


def apply(model: torch.nn.Module, options: None, device: torch.device) -> torch.nn.Module:
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model
