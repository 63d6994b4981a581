"""Reference: galore-torch's GaLoreAdamW8bit (GaLore with bitsandbytes 8-bit Adam state), on the same matrices as
our galore8bit. Needs galore-torch and bitsandbytes, and CUDA (its 8-bit path asserts a CUDA build)."""
from __future__ import annotations

import torch

from methods.galore_torch import Options, check  # noqa: F401  (the same options as galore_torch)
from methods.galore_torch import build as _build

REQUIRES_CUDA = True


def build(named_params, options: Options, device: torch.device) -> torch.optim.Optimizer:
    return _build(named_params, options, device, eight_bit=True)
