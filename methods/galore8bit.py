"""8-bit GaLore (Zhao et al., 2024, §4.3): GaLore whose low-rank Adam moments are stored blockwise-quantized in
8 bits (the code books and blocks of kernels/quant.py), so a projected m × n matrix keeps 2 × r × n bytes of
moments (+ absmax) instead of 2 × 4 × r × n. The update rule is GaLore's (methods/galore.py) with m, v passing
through quantize → dequantize between steps; the parameters outside the subspace get 8-bit AdamW
(methods/adamw8bit.py), as in the paper's 8-bit GaLore (built on bitsandbytes' 8-bit AdamW).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from membench_kernels.quant import BLOCK
from methods import adamw8bit
from methods.galore import GaLoreAdamW, check_rank, split_groups
from methods.galore import Options as GaLoreOptions
from methods.options import POWER_OF_TWO


@dataclass(frozen=True)
class Options(GaLoreOptions):
    RANGES = {"block_size": POWER_OF_TWO}  # the Triton 8-bit AdamW kernel's blocks

    block_size: int = BLOCK


class GaLore8bitAdamW(GaLoreAdamW):
    def full_rank_step(self, params, group):
        adamw8bit.step_params(params, [self.state[p] for p in params], group, self.options.block_size)

    def adam_directions(self, lows, states, group):
        """The 8-bit AdamW step (fused kernel on CUDA) of a zero "parameter" with lr = −1 and no decay leaves the
        bias-corrected Adam direction in it, and the updated 8-bit moments in the state."""
        directions = []
        for low, state in zip(lows, states, strict=True):
            if "m_codes" not in state:
                state.update({k: v for k, v in adamw8bit.init_state(low, self.options.block_size).items()
                              if k != "step"})
            direction = torch.zeros(low.shape, dtype=torch.float32, device=low.device)
            adamw8bit.step_tensor(direction, low.contiguous(), state, -1.0, *group["betas"], group["eps"], 0.0,
                                  state["step"], self.options.block_size)
            directions.append(direction)
        return directions


check = check_rank
UPDATES_INT8_WEIGHTS = True  # its rule can run inside INT8 layers (methods/int8_weights.py)


def build(named_params, options: Options, device: torch.device) -> torch.optim.Optimizer:
    return GaLore8bitAdamW(split_groups(named_params, options), options)
