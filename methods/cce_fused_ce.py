"""Reference: Apple's cut-cross-entropy (Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models",
2024) as a model transform. Needs cut-cross-entropy and CUDA."""
from __future__ import annotations

import torch

from methods.fused_ce import REPLACES, install_loss  # noqa: F401  (one loss transform at a time)

REQUIRES_CUDA = True


def apply(model: torch.nn.Module, options: None, device: torch.device) -> torch.nn.Module:
    from methods import require

    cce = require("cut_cross_entropy", "transform cce_fused_ce")
    return install_loss(model, lambda h, weight, targets: cce.linear_cross_entropy(h, weight, targets))
