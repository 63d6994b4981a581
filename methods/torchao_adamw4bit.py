"""Reference: torchao's AdamW4bit (Li et al., "Memory Efficient Optimizers with 4-bit States", NeurIPS 2023:
4-bit first moment, 4-bit second moment with rank-1 normalization, block 128), as a method. Needs torchao."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.adamw import AdamHyperparameters
from methods.options import COUNT
from methods.torchao_adamw8bit import COMPILED_STEP  # noqa: F401  (the same compiled step)
from methods.torchao_adamw8bit import build as _build


@dataclass(frozen=True)
class Options(AdamHyperparameters):
    RANGES = {"block_size": COUNT}

    block_size: int = 128


def build(named_params, options: Options, device: torch.device) -> torch.optim.Optimizer:
    return _build(named_params, options, device, class_name="AdamW4bit")
