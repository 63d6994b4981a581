"""Reference: apollo-torch's APOLLOAdamW (the paper authors' package) on the same matrices as our apollo; with
`scaling: tensor`, rank 1 and scale 128 it is their APOLLO-Mini. Needs apollo-torch; otherwise `skipped`.
Note their `scale` is applied as √scale (so 128 here equals our apollo_mini's α = √128)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from methods.lowrank import LowRankOptions, check_rank, split_groups


@dataclass(frozen=True)
class Options(LowRankOptions):
    rank: int = 256
    scale: float = 1.0
    scaling: Literal["channel", "tensor"] = "channel"
    projection: Literal["random", "svd"] = "random"


check = check_rank


def build(named_params, options: Options, device: torch.device) -> torch.optim.Optimizer:
    from methods import require

    apollo_torch = require("apollo_torch", "method apollo_torch")
    groups = []
    for group in split_groups(named_params, options):
        extra = {"rank": options.rank, "update_proj_gap": options.update_gap, "scale": options.scale,
                 "proj": options.projection, "proj_type": "std", "scale_type": options.scaling} \
            if group["project"] else {}
        groups.append({"params": group["params"], **extra})
    return apollo_torch.APOLLOAdamW(groups, lr=options.lr, betas=tuple(options.betas), eps=options.eps,
                                    weight_decay=options.weight_decay)
