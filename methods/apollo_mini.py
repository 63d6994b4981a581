"""APOLLO-Mini (Zhu et al., 2025): APOLLO with rank 1 and one tensor-wise scaling factor per matrix,
s = ‖R̃‖ / ‖R‖, and scale α = √128 — SGD-like memory (one r × n moment pair with r = 1). Rule: methods/apollo.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from methods.apollo import ApolloAdamW, check_rank, split_groups
from methods.apollo import Options as ApolloOptions


@dataclass(frozen=True)
class Options(ApolloOptions):
    rank: int = 1
    scale: float = 128**0.5
    scaling: Literal["channel", "tensor"] = "tensor"


check = check_rank
UPDATES_INT8_WEIGHTS = True  # its rule can run inside INT8 layers (methods/int8_weights.py)


def build(named_params, options: Options, device: torch.device) -> torch.optim.Optimizer:
    return ApolloAdamW(split_groups(named_params, options), options)
