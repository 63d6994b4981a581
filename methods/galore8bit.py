"""8-bit GaLore (Zhao et al., 2024, §4.3): GaLore whose low-rank Adam moments are stored blockwise-quantized in
8 bits (the code books and blocks of methods/quant.py), so a projected m × n matrix keeps 2 × r × n bytes of
moments (+ absmax) instead of 2 × 4 × r × n. The update rule is GaLore's (methods/galore.py) with m, v passing
through quantize → dequantize between steps; the parameters outside the subspace get 8-bit AdamW
(methods/adamw8bit.py), as in the paper's 8-bit GaLore (built on bitsandbytes' 8-bit AdamW).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from methods import adamw8bit
from methods.galore import GaLoreAdamW, check_rank, split_groups
from methods.lowrank import LowRankOptions
from methods.quant import BLOCK, dequantize, dynamic_map, quantize


@dataclass(frozen=True)
class Options(LowRankOptions):
    block_size: int = BLOCK


class GaLore8bitAdamW(GaLoreAdamW):
    def full_rank_step(self, params, group):
        adamw8bit.step_params(params, [self.state[p] for p in params], group, self.options.block_size)

    def load_moments(self, state, like):
        if "m_codes" not in state or state["m_codes"].shape != like.shape:
            return torch.zeros_like(like), torch.zeros_like(like)
        block = self.options.block_size
        return (dequantize(state["m_codes"], state["m_absmax"], dynamic_map(True, like.device), block),
                dequantize(state["v_codes"], state["v_absmax"], dynamic_map(False, like.device), block))

    def store_moments(self, state, m, v):
        block = self.options.block_size
        state["m_codes"], state["m_absmax"] = quantize(m, dynamic_map(True, m.device), block)
        state["v_codes"], state["v_absmax"] = quantize(v, dynamic_map(False, v.device), block)


check = check_rank
UPDATES_INT8_WEIGHTS = True  # its rule can run inside INT8 layers (methods/int8_weights.py)


def build(named_params, options: Options, device: torch.device) -> torch.optim.Optimizer:
    return GaLore8bitAdamW(split_groups(named_params, options), options)
