"""Reference: Liger-Kernel's fused linear cross-entropy (LigerFusedLinearCrossEntropyLoss) as a model transform,
to compare with our fused_ce in one sweep. Needs liger-kernel and CUDA (Triton GPU kernels)."""
from __future__ import annotations

import torch

from methods.fused_ce import REPLACES, install_loss  # noqa: F401  (one loss transform at a time)

REQUIRES_CUDA = True


def apply(model: torch.nn.Module, options: None, device: torch.device) -> torch.nn.Module:
    from methods import require

    liger = require("liger_kernel.transformers", "transform liger_fused_ce")
    loss = liger.LigerFusedLinearCrossEntropyLoss()
    return install_loss(model, lambda h, weight, targets: loss(weight, h, targets))
