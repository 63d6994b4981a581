"""Q-GaLore (Zhang et al., "Q-GaLore: Quantized GaLore with INT4 Projection and Layer-Adaptive Low-Rank Gradients",
2024): 8-bit GaLore (methods/galore8bit.py) on INT8 weights (methods/int8_weights.py, with stochastic rounding),
with two changes to the projection:
- INT4 projection: after each SVD, P is stored as 4-bit symmetric codes with one fp32 scale per column
  (P ≈ s_j · q, q ∈ [−7, 7]) and used dequantized;
- lazy, layer-adaptive refresh: at each refresh the cosine similarity between the old and new subspaces,
  mean_j |⟨p_j^old, p_j^new⟩|, is measured; after `patience` consecutive refreshes above `similarity` the layer's
  refresh gap doubles (a converged subspace is refreshed less and less often).
Use it with the int8_weights transform (conf/method/qgalore.yaml); parameters that are not INT8 get 8-bit GaLore.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.galore8bit import GaLore8bitAdamW
from methods.galore8bit import Options as GaLore8bitOptions
from methods.lowrank import check_rank, split_groups
from methods.options import COUNT, NON_NEGATIVE


@dataclass(frozen=True)
class Options(GaLore8bitOptions):
    # similarity: a threshold on a mean |cosine| (in [0, 1]); above 1 the refresh gap never grows
    RANGES = {"similarity": NON_NEGATIVE, "patience": COUNT}

    similarity: float = 0.4
    patience: int = 2


def quantize_int4_columns(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = (p.abs().amax(dim=0, keepdim=True) / 7).clamp(min=1e-12)
    return (p / scale).round_().clamp_(-7, 7).to(torch.int8), scale


class QGaLoreAdamW(GaLore8bitAdamW):
    def due_for_refresh(self, state):
        return state["step"] >= state.get("next_refresh", 1)

    def refresh(self, grad, state):
        state["side"] = self.side_of(grad)
        new = self.top_singular_vectors(grad, state["side"])
        if "proj_codes" in state:
            similarity = float((self.projection(state) * new).sum(dim=0).abs().mean())
            state["similar_in_a_row"] = state.get("similar_in_a_row", 0) + 1 if similarity >= self.options.similarity \
                else 0
            if state["similar_in_a_row"] >= self.options.patience:
                state["gap"], state["similar_in_a_row"] = 2 * state.get("gap", self.options.update_gap), 0
            state["last_similarity"] = similarity
        state["proj_codes"], state["proj_scale"] = quantize_int4_columns(new)
        state["next_refresh"] = state["step"] + state.get("gap", self.options.update_gap)

    @staticmethod
    def projection(state: dict) -> torch.Tensor:
        return state["proj_codes"].float() * state["proj_scale"]

    def down(self, grad, state):
        proj = self.projection(state).to(grad.dtype)
        return proj.T @ grad if state["side"] == "left" else grad @ proj

    def back(self, low, state):
        proj = self.projection(state).to(low.dtype)
        return proj @ low if state["side"] == "left" else low @ proj.T


check = check_rank
UPDATES_INT8_WEIGHTS = True  # its rule can run inside INT8 layers (methods/int8_weights.py)


def build(named_params, options: Options, device: torch.device) -> torch.optim.Optimizer:
    return QGaLoreAdamW(split_groups(named_params, options), options)
