"""Reference: galore-torch's GaLoreAdamW (the paper authors' package), on the same attention / MLP matrices as our
galore (methods/lowrank.split_groups), so both can run in one sweep. Needs galore-torch; otherwise `skipped`."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.lowrank import LowRankOptions, check_rank, split_groups


@dataclass(frozen=True)
class Options(LowRankOptions):
    pass


check = check_rank


def build(named_params, options: Options, device: torch.device, eight_bit: bool = False) -> torch.optim.Optimizer:
    from methods import require

    galore_torch = require("galore_torch", "method galore_torch")
    groups = []
    for group in split_groups(named_params, options):
        extra = {"rank": options.rank, "update_proj_gap": options.update_gap, "scale": options.scale,
                 "proj_type": "std"} if group["project"] else {}
        groups.append({"params": group["params"], **extra})
    cls = galore_torch.GaLoreAdamW8bit if eight_bit else galore_torch.GaLoreAdamW
    kwargs = {} if eight_bit else {"no_deprecation_warning": True}
    return cls(groups, lr=options.lr, betas=tuple(options.betas), eps=options.eps,
               weight_decay=options.weight_decay, **kwargs)
