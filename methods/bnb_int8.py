"""INT8 weights through bitsandbytes for inference (methods/bnb_weights.py has the rule and the paper)."""
from __future__ import annotations

from methods.bnb_weights import INFERENCE, REPLACES, REQUIRES_CUDA, Options, apply_kind, check  # noqa: F401


def apply(model, options: Options, device):
    return apply_kind(model, "int8", options, device)
